"""The console's operators: accounts with argon2id password hashes and a role (``admin``
acts, ``read-only`` only looks), their sessions, and the record of every action they take.

A session is a random token in a cookie; the database keeps only its SHA-256, with the
operator, the session's CSRF token and its expiry, so a copy of the database opens no
session and logging out (or disabling the operator) ends it at once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import re
import secrets
from typing import Any, NamedTuple

import psycopg
from argon2 import PasswordHasher

from kernel import passwords
from schemas.errors import InputError, NotFound

ROLES = ("admin", "read-only")
MIN_PASSWORD_CHARS = 12
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
#: argon2id with argon2-cffi's defaults (RFC 9106's second recommended profile).
_HASHER = PasswordHasher()
#: Verified when the name is unknown, so that a wrong name takes as long as a wrong password.
_DUMMY_HASH = _HASHER.hash("no operator has this password")


class Session(NamedTuple):
    operator: str
    role: str
    csrf_token: str

    @property
    def may_act(self) -> bool:
        return self.role == "admin"


def add_operator(url: str, name: str, role: str, password: str) -> None:
    """Create an operator; ``InputError`` for a bad name, role or password, or a taken name."""
    if not _NAME.fullmatch(name):
        raise InputError(f"operator name {name!r}: lower-case letters, digits, '.', '_', '-'")
    if role not in ROLES:
        raise InputError(f"role {role!r}: one of {', '.join(ROLES)}")
    if len(password) < MIN_PASSWORD_CHARS:
        raise InputError(f"the password needs at least {MIN_PASSWORD_CHARS} characters")
    with psycopg.connect(url) as conn:
        try:
            conn.execute(
                "INSERT INTO operators (name, password_hash, role) VALUES (%s, %s, %s)",
                (name, _HASHER.hash(password), role),
            )
        except psycopg.errors.UniqueViolation:
            raise InputError(f"operator {name!r} exists already") from None


def list_operators(url: str) -> list[tuple[str, str, dt.datetime, dt.datetime | None]]:
    """Every operator: name, role, created, disabled (never a hash)."""
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT name, role, created_at, disabled_at FROM operators ORDER BY name"
        ).fetchall()


def set_disabled(url: str, name: str, disabled: bool) -> None:
    """Disable an operator (their sessions end with it) or enable them again."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "UPDATE operators SET disabled_at = CASE WHEN %s THEN now() END WHERE name = %s",
            (disabled, name),
        ).rowcount
        if not found:
            raise NotFound(f"no operator {name!r}")
        if disabled:
            conn.execute("DELETE FROM operator_sessions WHERE operator = %s", (name,))


async def verify(conn: psycopg.AsyncConnection[Any], name: str, password: str) -> bool:
    """Whether ``name`` is an enabled operator with this password (argon2 in a thread)."""
    row = await (
        await conn.execute(
            "SELECT password_hash FROM operators WHERE name = %s AND disabled_at IS NULL",
            (name,),
        )
    ).fetchone()
    stored = row[0] if row else _DUMMY_HASH  # the same work whether the name exists or not
    return await asyncio.to_thread(passwords.verify, stored, password) and row is not None


async def open_session(
    conn: psycopg.AsyncConnection[Any], name: str, lifetime_s: float
) -> tuple[str, str]:
    """A new session for ``name``: (the cookie's token, the session's CSRF token)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    await conn.execute(
        "INSERT INTO operator_sessions (token_sha256, operator, csrf_token, expires_at)"
        " VALUES (%s, %s, %s, now() + make_interval(secs => %s))",
        (_digest(token), name, csrf, lifetime_s),
    )
    await conn.execute("DELETE FROM operator_sessions WHERE expires_at < now()")
    return token, csrf


async def session(conn: psycopg.AsyncConnection[Any], token: str | None) -> Session | None:
    """The live session of this cookie token, if any (its operator enabled, not expired)."""
    if not token or len(token) > 100:
        return None
    row = await (
        await conn.execute(
            "SELECT o.name, o.role, s.csrf_token FROM operator_sessions s"
            " JOIN operators o ON o.name = s.operator"
            " WHERE s.token_sha256 = %s AND s.expires_at > now() AND o.disabled_at IS NULL",
            (_digest(token),),
        )
    ).fetchone()
    return Session(*row) if row else None


async def close_session(conn: psycopg.AsyncConnection[Any], token: str) -> None:
    await conn.execute("DELETE FROM operator_sessions WHERE token_sha256 = %s", (_digest(token),))


async def record(
    conn: psycopg.AsyncConnection[Any],
    operator: str,
    action: str,
    target: str,
    detail: str | None = None,
) -> None:
    """Note who did what (in the caller's transaction, with what it did)."""
    await conn.execute(
        "INSERT INTO operator_actions (operator, action, target, detail) VALUES (%s, %s, %s, %s)",
        (operator, action, target, detail),
    )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()

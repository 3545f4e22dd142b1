"""The console's operators (``cloud_gateway.operators``) and their command line: argon2id
hashes, sessions that end when the operator is disabled, and clear refusals."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cloud_gateway import operators
from schemas.errors import InputError, NotFound
from tests.db import query

pytestmark = pytest.mark.database

PASSWORD = "twelve chars or more"


def run(database: str, coroutine: Any) -> Any:
    async def go() -> Any:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            return await coroutine(conn)

    return asyncio.run(go())


def test_a_password_is_kept_as_an_argon2id_hash_and_checked(database: str) -> None:
    operators.add_operator(database, "olga", "admin", PASSWORD)
    [(stored,)] = query(database, "SELECT password_hash FROM operators WHERE name = 'olga'")
    assert stored.startswith("$argon2id$") and PASSWORD not in stored
    assert run(database, lambda c: operators.verify(c, "olga", PASSWORD)) is True
    assert run(database, lambda c: operators.verify(c, "olga", PASSWORD + "!")) is False
    assert run(database, lambda c: operators.verify(c, "nobody", PASSWORD)) is False


@pytest.mark.parametrize(
    ("name", "role", "password", "says"),
    [
        ("Olga", "admin", PASSWORD, "lower-case"),
        ("o" * 64, "admin", PASSWORD, "lower-case"),
        ("olga", "root", PASSWORD, "one of admin, read-only"),
        ("olga", "read-only", "short", "at least 12"),
    ],
)
def test_bad_operators_are_refused_with_the_reason(
    database: str, name: str, role: str, password: str, says: str
) -> None:
    with pytest.raises(InputError, match=says):
        operators.add_operator(database, name, role, password)


def test_a_session_lasts_until_logout_expiry_or_the_operator_is_disabled(database: str) -> None:
    operators.add_operator(database, "olga", "read-only", PASSWORD)

    async def sessions(conn: psycopg.AsyncConnection[Any]) -> list[Any]:
        token, csrf = await operators.open_session(conn, "olga", 3600)
        opened = await operators.session(conn, token)
        other, _ = await operators.open_session(conn, "olga", 3600)
        await operators.close_session(conn, other)
        closed = await operators.session(conn, other)
        gone, _ = await operators.open_session(conn, "olga", -1)  # already expired
        expired = await operators.session(conn, gone)
        return [token, csrf, opened, closed, expired, await operators.session(conn, "forged")]

    token, csrf, opened, closed, expired, forged = run(database, sessions)
    assert opened == operators.Session("olga", "read-only", csrf) and not opened.may_act
    assert closed is None and expired is None and forged is None
    assert query(
        database, "SELECT count(*) FROM operator_sessions WHERE token_sha256 = %s", token.encode()
    ) == [(0,)]  # only its hash is kept
    operators.set_disabled(database, "olga", True)
    assert run(database, lambda c: operators.session(c, token)) is None
    assert run(database, lambda c: operators.verify(c, "olga", PASSWORD)) is False
    operators.set_disabled(database, "olga", False)
    assert run(database, lambda c: operators.verify(c, "olga", PASSWORD)) is True
    with pytest.raises(NotFound):
        operators.set_disabled(database, "nobody", True)


def test_the_command_line_adds_lists_and_disables_operators(database: str, tmp_path: Path) -> None:
    def chargeline(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chargeline", "operators", *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={
                "CHARGELINE_DATABASE_URL": database,
                "CHARGELINE_DATA_DIR": str(tmp_path),
                "PATH": "",
            },
            check=False,
        )

    added = chargeline("add", "olga", "--role", "admin", stdin=PASSWORD + "\n")
    assert added.returncode == 0 and "olga (admin) added" in added.stdout
    again = chargeline("add", "olga", "--role", "read-only", stdin=PASSWORD + "\n")
    assert again.returncode == 2 and "chargeline: operator 'olga' exists already" in again.stderr
    assert chargeline("disable", "olga").returncode == 0
    listed = chargeline("list").stdout
    assert listed.startswith("olga  admin  created ") and "disabled" in listed
    assert PASSWORD not in listed and "$argon2" not in listed

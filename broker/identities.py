"""Broker identities: who may connect, with which role, and how it proves it.

A controller's identity is its controller id; a service's is ``svc_…`` (``svc_ingest``,
``svc_gateway``; one per process when several share the load). Each connects with its
name as both MQTT username and client id, and either a password or a client certificate
whose CN is the name (``broker/pki.py``).

Passwords are generated here (32 random characters, about 190 bits), shown once, and kept
only as hashes: argon2id for the embedded broker, and PBKDF2-SHA512 in Mosquitto's
``$7$`` form for the exported password files. The hash parameters are light on purpose:
a random secret of this length cannot be guessed whatever the work factor, while a broker
restart makes every controller reconnect at once, and each connection pays the hash.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from argon2 import PasswordHasher

from broker.policy import Role
from kernel import passwords
from schemas.errors import Refused
from schemas.topics import is_controller_id

SERVICE_NAME_RE = re.compile(r"svc_[a-z0-9-]{1,40}")
DEFAULT_SERVICE_NAMES = {
    Role.INGEST: "svc_ingest",
    Role.GATEWAY: "svc_gateway",
    Role.OCPP: "svc_ocpp",
    Role.LOADS: "svc_loads",
}

#: ~5 ms per check on these machines (see the module docstring for why so light).
_ARGON2 = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1)
PBKDF2_ITERATIONS = 1000


class IdentityError(Refused):
    """A request about identities that cannot be done; the message says why."""

    exit_code = 2


@dataclass(frozen=True, slots=True)
class Identity:
    name: str
    role: Role
    argon2: str | None
    pbkdf2: str | None
    revoked: bool
    rotated_at: datetime | None = None
    #: SHA-256 of the one client certificate (DER) this identity may connect with.
    cert_sha256: bytes | None = None


def check_name(name: str, role: Role) -> None:
    if role in (Role.CONTROLLER, Role.STATION):
        if not is_controller_id(name):
            raise IdentityError(f"{name!r} is not a controller id ([a-z0-9][a-z0-9-]*)")
    elif not SERVICE_NAME_RE.fullmatch(name):
        raise IdentityError(f"service identity {name!r} must look like svc_name (svc_[a-z0-9-]+)")


# --- hashes -----------------------------------------------------------------------------


def new_password() -> str:
    return secrets.token_urlsafe(24)


def argon2_hash(password: str) -> str:
    return _ARGON2.hash(password)


def argon2_verify(stored: str, password: str) -> bool:
    return passwords.verify(stored, password)


def pbkdf2_hash(password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """Mosquitto's ``$7$iterations$salt$hash`` (PBKDF2-HMAC-SHA512, base64 fields).

    The salt is 12 ASCII characters, so EMQX (which takes the salt as text) derives the
    very same key from it: one stored hash serves both exports.
    """
    salt = secrets.token_hex(6).encode()
    key = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations, 64)
    return f"$7${iterations}${_b64(salt)}${_b64(key)}"


@dataclass(frozen=True, slots=True)
class Pbkdf2:
    iterations: int
    salt: bytes
    key: bytes

    @classmethod
    def parse(cls, stored: str) -> Pbkdf2:
        _, scheme, iterations, salt, key = stored.split("$")
        if scheme != "7":
            raise ValueError(f"not a $7$ hash: {stored[:8]}…")
        return cls(int(iterations), base64.b64decode(salt), base64.b64decode(key))

    def verify(self, password: str) -> bool:
        key = hashlib.pbkdf2_hmac("sha512", password.encode(), self.salt, self.iterations, 64)
        return hmac.compare_digest(key, self.key)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# --- the table --------------------------------------------------------------------------

_COLUMNS = "name, role, argon2, pbkdf2, revoked_at IS NOT NULL, rotated_at, cert_sha256"


def _identity(row: tuple[Any, ...]) -> Identity:
    name, role, argon2, pbkdf2, revoked, rotated_at, cert = row
    return Identity(
        name, Role(role), argon2, pbkdf2, revoked, rotated_at, bytes(cert) if cert else None
    )


def issue(conn: psycopg.Connection, name: str, role: Role) -> str:
    """Create ``name`` or give it a new password (rotating the old one out); return it.

    The only time the password exists outside the caller's memory is this return value.
    """
    role = _check_registered(conn, name, role)
    password = new_password()
    store(conn, name, role, *hashes_of(password))
    return password


def hashes_of(password: str) -> tuple[str, str]:
    """(argon2, pbkdf2): what is kept of a password."""
    return argon2_hash(password), pbkdf2_hash(password)


def _check_registered(conn: psycopg.Connection, name: str, role: Role) -> Role:
    """Check ``name`` may be an identity of ``role``; return its role (a registered OCPP
    station's controller id is a station's identity, whichever was asked for)."""
    check_name(name, role)
    if role in (Role.CONTROLLER, Role.STATION):
        known = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM ocpp_stations s WHERE s.controller_id = c.controller_id)"
            " FROM controllers c WHERE c.controller_id = %s",
            (name,),
        ).fetchone()
        if known is None:
            raise IdentityError(
                f"controller {name!r} is not in the registry: import it first"
                " (chargeline registry import FILE)"
            )
        return Role.STATION if known[0] else Role.CONTROLLER
    return role


def ensure_certificate_only(conn: psycopg.Connection, name: str, role: Role) -> None:
    """Make sure ``name`` exists (unrevoked) so its client certificate is accepted."""
    role = _check_registered(conn, name, role)
    existing = get(conn, name)
    if existing is None or existing.revoked:
        store(conn, name, role, None, None)
    elif existing.role is not role:
        raise IdentityError(f"{name!r} is a {existing.role} identity, not a {role}")


def bind_certificate(conn: psycopg.Connection, name: str, role: Role, sha256: bytes) -> None:
    """Make ``name`` (created, or un-revoked, if need be) accept exactly the certificate
    whose DER SHA-256 is ``sha256``; any certificate issued to it before is refused."""
    ensure_certificate_only(conn, name, _check_registered(conn, name, role))
    conn.execute("UPDATE mqtt_identities SET cert_sha256 = %s WHERE name = %s", (sha256, name))


def store(
    conn: psycopg.Connection, name: str, role: Role, argon2: str | None, pbkdf2: str | None
) -> None:
    """Create ``name`` or replace its hashes (un-revoking it); the role cannot change."""
    row = conn.execute(
        "INSERT INTO mqtt_identities (name, role, argon2, pbkdf2) VALUES (%s, %s, %s, %s)"
        " ON CONFLICT (name) DO UPDATE SET argon2 = excluded.argon2, pbkdf2 = excluded.pbkdf2,"
        "   rotated_at = now(), revoked_at = NULL"
        "   WHERE mqtt_identities.role = excluded.role"
        " RETURNING name",
        (name, role.value, argon2, pbkdf2),
    ).fetchone()
    if row is None:
        raise IdentityError(f"{name!r} already exists with another role")


def issue_missing_controllers(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """A password for every registered controller that has no identity yet."""
    missing = conn.execute(
        "SELECT controller_id FROM controllers c WHERE NOT EXISTS"
        " (SELECT 1 FROM mqtt_identities i WHERE i.name = c.controller_id)"
        " ORDER BY controller_id"
    ).fetchall()
    return [(cid, issue(conn, cid, Role.CONTROLLER)) for (cid,) in missing]


def revoke(conn: psycopg.Connection, name: str) -> None:
    # Revoking also forgets the certificate: issuing the identity again (a password or a
    # new certificate) never re-admits an old, perhaps stolen, one.
    row = conn.execute(
        "UPDATE mqtt_identities SET revoked_at = now(), cert_sha256 = NULL WHERE name = %s"
        " RETURNING name",
        (name,),
    ).fetchone()
    if row is None:
        raise IdentityError(f"no identity named {name!r}")


def get(conn: psycopg.Connection, name: str) -> Identity | None:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM mqtt_identities WHERE name = %s", (name,)
    ).fetchone()
    return _identity(row) if row else None


def all_identities(conn: psycopg.Connection) -> list[Identity]:
    rows = conn.execute(f"SELECT {_COLUMNS} FROM mqtt_identities ORDER BY name").fetchall()
    return [_identity(row) for row in rows]


async def load(conn: psycopg.AsyncConnection) -> dict[str, Identity]:
    cur = await conn.execute(f"SELECT {_COLUMNS} FROM mqtt_identities")
    return {row[0]: _identity(row) for row in await cur.fetchall()}


def controller_of_station(conn: psycopg.Connection, name: str) -> str:
    """``name``, or the controller id of the OCPP station whose station id it is."""
    if SERVICE_NAME_RE.fullmatch(name):
        return name
    row = conn.execute(
        "SELECT controller_id FROM ocpp_stations WHERE station_id = %s", (name,)
    ).fetchone()
    return str(row[0]) if row else name


def stations(conn: psycopg.Connection) -> frozenset[str]:
    """The controller ids of the registry's OCPP stations (the bridge speaks for these)."""
    return frozenset(cid for (cid,) in conn.execute("SELECT controller_id FROM ocpp_stations"))


async def load_stations(conn: psycopg.AsyncConnection) -> frozenset[str]:
    """The controller ids of the registry's OCPP stations (the bridge speaks for these)."""
    cur = await conn.execute("SELECT controller_id FROM ocpp_stations")
    return frozenset(cid for (cid,) in await cur.fetchall())

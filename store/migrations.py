"""Versioned SQL migrations: ``chargeline db upgrade``.

Files live in ``store/sql`` as ``NNNN_name.sql``. A migration that differs between plain
PostgreSQL and TimescaleDB comes as a pair, ``NNNN_name.plain.sql`` and
``NNNN_name.timescale.sql``; the TimescaleDB one is used when the extension can really be
used: installed on the server *and* preloaded (``shared_preload_libraries``), or already
created in the database. An extension that is installed but not preloaded cannot be
created (the server closes the connection), so such a server gets the plain flavour, with
a warning that says how to change that. Every Timescale-specific statement lives in those
``.timescale.sql`` files.

Each migration runs in its own transaction and is recorded in ``schema_migrations`` with
the flavour in force, in that transaction: a migration that failed is not recorded. The
flavour is bound by the first *flavoured* migration that committed (0002), not by the
plain ones before it, so a failed first attempt does not pin a flavour for ever. An
advisory lock lets several processes call ``upgrade`` at once. Re-running applies nothing
new. A failure is raised as it happened; releasing the lock on a broken connection never
hides it.
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from schemas.errors import Refused

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(plain|timescale))?\.sql$")
_LOCK_KEY = 0x6368_6172  # "char"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True)
class TimescaleState:
    installed: bool  # in pg_available_extensions
    preloaded: bool  # in shared_preload_libraries
    created: bool  # CREATE EXTENSION already ran in this database


def choose_flavour(state: TimescaleState) -> tuple[str, str | None]:
    """The flavour to use, and a warning for the operator when TimescaleDB is there but
    cannot be used."""
    if state.created or (state.installed and state.preloaded):
        return "timescale", None
    if state.installed:
        return "plain", (
            "TimescaleDB is installed but not in shared_preload_libraries, so it cannot be"
            " used; applying the plain flavour. To use TimescaleDB, add it there, restart"
            " PostgreSQL and upgrade a new database."
        )
    return "plain", None


def timescale_state(conn: psycopg.Connection) -> TimescaleState:
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'),"
        " 'timescaledb' = ANY (string_to_array("
        "   replace(current_setting('shared_preload_libraries'), ' ', ''), ',')),"
        " EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
    ).fetchone()
    assert row is not None
    return TimescaleState(bool(row[0]), bool(row[1]), bool(row[2]))


def available_flavour(conn: psycopg.Connection) -> str:
    flavour, warning = choose_flavour(timescale_state(conn))
    if warning:
        log.warning("%s", warning)
    return flavour


def flavoured_versions() -> set[int]:
    """Versions that come as a .plain/.timescale pair."""
    return {
        int(match[1])
        for entry in resources.files("store.sql").iterdir()
        if (match := _NAME.match(entry.name)) and match[3] is not None
    }


def bound_flavour(recorded: list[tuple[int, str]], flavoured: set[int]) -> str | None:
    """The flavour a database is bound to: that of its applied flavoured migrations."""
    kinds = {flavour for version, flavour in recorded if version in flavoured}
    if len(kinds) > 1:
        raise RuntimeError(f"schema_migrations mixes flavours {sorted(kinds)}")
    return kinds.pop() if kinds else None


def load_migrations(flavour: str) -> list[Migration]:
    found: dict[int, Migration] = {}
    for entry in resources.files("store.sql").iterdir():
        match = _NAME.match(entry.name)
        if not match:
            continue
        version, name, variant = int(match[1]), match[2], match[3]
        if variant not in (None, flavour):
            continue
        if version in found:
            raise RuntimeError(
                f"two migrations claim version {version}: {found[version].name}, {name}"
            )
        found[version] = Migration(version, name, entry.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


class MigrationRefused(Refused):
    """A pending migration this login may not apply (a service's own login)."""

    def __init__(self, migration: Migration, exc: Exception) -> None:
        super().__init__(
            f"migration {migration.version:04d}_{migration.name} is pending and this database"
            f" login may not apply it ({exc}); run `chargeline db upgrade` with the schema"
            " owner's URL, then start the service again",
            migration=f"{migration.version:04d}_{migration.name}",
        )


def _up_to_date(url: str) -> bool:
    """Is every migration applied? Read-only, so a service's own role (which may only read
    ``schema_migrations``) can start on a schema its owner has brought up to date."""
    with psycopg.connect(url, autocommit=True) as conn:
        exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
        if not exists or not exists[0]:
            return False
        done = {int(v) for (v,) in conn.execute("SELECT version FROM schema_migrations")}
    known = {m.version for m in load_migrations("plain")}
    return known <= done


def upgrade(url: str) -> list[str]:
    """Apply every pending migration; return the names applied."""
    applied: list[str] = []
    if _up_to_date(url):
        return applied
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            exists = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
            if exists is None or exists[0] is None:
                conn.execute(
                    "CREATE TABLE schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL, flavour text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
            recorded = [
                (int(v), str(f))
                for v, f in conn.execute("SELECT version, flavour FROM schema_migrations")
            ]
            done = {version for version, _ in recorded}
            flavour = bound_flavour(recorded, flavoured_versions()) or available_flavour(conn)
            for migration in load_migrations(flavour):
                if migration.version in done:
                    continue
                log.info(
                    "applying migration %04d_%s (%s)", migration.version, migration.name, flavour
                )
                with conn.transaction():
                    try:
                        conn.execute(migration.sql.encode())
                    except psycopg.errors.InsufficientPrivilege as exc:
                        raise MigrationRefused(migration, exc) from None
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, flavour) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, flavour),
                    )
                applied.append(f"{migration.version:04d}_{migration.name}")
        finally:
            # On a connection the failure broke, the lock went with the session: releasing
            # it would only raise a second error over the one the operator must see.
            with contextlib.suppress(psycopg.Error):
                conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def current_version(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

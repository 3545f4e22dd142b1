"""Versioned SQL migrations: ``chargeline db upgrade``.

Files live in ``ingest/sql`` as ``NNNN_name.sql``. A migration that differs between plain
PostgreSQL and TimescaleDB comes as a pair, ``NNNN_name.plain.sql`` and
``NNNN_name.timescale.sql``; the TimescaleDB one is used when the extension is available
on the server. Every Timescale-specific statement lives in those ``.timescale.sql`` files.

Each migration runs in its own transaction and is recorded in ``schema_migrations`` with
the flavour it used; an advisory lock lets several processes call ``upgrade`` at once.
Re-running applies nothing new.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(plain|timescale))?\.sql$")
_LOCK_KEY = 0x6368_6172  # "char"


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_flavour(conn: psycopg.Connection) -> str:
    row = conn.execute(
        "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    return "timescale" if row else "plain"


def load_migrations(flavour: str) -> list[Migration]:
    found: dict[int, Migration] = {}
    for entry in resources.files("ingest.sql").iterdir():
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


def upgrade(url: str) -> list[str]:
    """Apply every pending migration; return the names applied."""
    applied: list[str] = []
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, flavour text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
            recorded = conn.execute("SELECT DISTINCT flavour FROM schema_migrations").fetchall()
            flavour = recorded[0][0] if recorded else available_flavour(conn)
            for migration in load_migrations(flavour):
                if migration.version in done:
                    continue
                log.info(
                    "applying migration %04d_%s (%s)", migration.version, migration.name, flavour
                )
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, flavour) VALUES (%s, %s, %s)",
                        (migration.version, migration.name, flavour),
                    )
                applied.append(f"{migration.version:04d}_{migration.name}")
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return applied


def current_version(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

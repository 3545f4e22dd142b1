"""What the benchmarks share: servers on loopback, a sample registry, batches, the JSON line."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from schemas.messages import MeterBatch, MeterFrame, OutletReading
from store import migrations
from store.registry import import_registry
from store.registry_file import ControllerEntry, OutletEntry, Registry, SiteEntry
from tests.procs import free_port, wait_port

MINUTE0 = 1_767_225_600


def parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc)
    p.add_argument(
        "--quick", action="store_true", help="a smaller run that finishes in under a minute"
    )
    return p


def emit(name: str, figures: dict[str, Any]) -> None:
    """The final line: one JSON object with the figures and the machine."""
    figures = {"bench": name, **figures, "machine": machine()}
    print(json.dumps(figures, sort_keys=False))


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


@contextmanager
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="chargeline-bench-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def database(tmp: Path, controllers: list[str]) -> str:
    """A fresh migrated database with ``controllers`` registered (8 outlets each)."""
    server = os.environ.get("CHARGELINE_DATABASE_URL")
    if not server:
        from store.database import embedded_url

        server = embedded_url(tmp)
    name = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = psycopg.conninfo.make_conninfo(server, dbname=name)
    migrations.upgrade(url)
    registry = Registry(
        sites=[SiteEntry(id="bench", name="Bench", contract_current_a=1000, tariff_per_kwh=30)],
        controllers=[
            ControllerEntry(
                id=c,
                site="bench",
                outlets=[OutletEntry(number=n, outlet_id=f"{c}-{n}") for n in range(1, 9)],
            )
            for c in controllers
        ],
    )
    import_registry(url, registry)
    return url


def evening_peak(
    url: str,
    controllers: list[str],
    *,
    charging: bool,
    history: int = 50_000,
    client_id: str | None = None,
) -> None:
    """The fleet as ingest meets it in the field: every controller online (as presence
    leaves it), ``history`` stopped charges behind, and with ``charging`` one charge drawing
    current on every outlet (an evening peak), each with its rise detector high, for a
    partner with a webhook URL (``client_id``, or one made here). The charge on outlet
    ``n`` of controller ``c`` is the partner's ``peak-c-n``. The benchmark's readings start
    after these charges began."""
    partner = client_id or "bench-partner"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO controller_status (controller_id, online, presence_since, presence_at,"
            " heard_at) SELECT c, true, now(), now(), now() FROM unnest(%s::text[]) c",
            (controllers,),
        )
        if client_id is None:
            conn.execute(
                "INSERT INTO oauth_clients (client_id, name, secret_sha256, scopes, webhook_url,"
                " webhook_secret) VALUES ('bench-partner', 'Bench partner', '\\x00',"
                " '{charges:write}', 'http://127.0.0.1:9/hooks', 'whsec_YmVuY2g=')"
            )
        columns = (
            "INSERT INTO charges (charge_id, partner_charge_id, client_id, outlet_id,"
            " controller_id, outlet_no, request_sha256, state, start_generation, end_at,"
            " requested_at, started_at, rise_at, stopped_at, stop_reason, reported,"
            " first_minute, first_energy_wh, last_minute, last_energy_wh, energy_wh,"
            " tariff_per_kwh, currency)"
        )
        conn.execute(
            f"{columns} SELECT 'h' || i, 'old-' || i, %s, c || '-' || n, c, n,"
            "  '\\x00', 'stopped', 1, t, t, t, t, t + interval '1 hour', 'partner stopped',"
            "  true, t, 0, t + interval '1 hour', 5000, 5000, 30, 'JPY'"
            " FROM generate_series(1, %s) i,"
            "  LATERAL (SELECT (%s::text[])[1 + i %% %s] AS c, 1 + (i / %s) %% 8 AS n,"
            "   to_timestamp(%s) - make_interval(secs => i * 60.0) AS t) x",
            (partner, history, controllers, len(controllers), len(controllers), MINUTE0 - 3600),
        )
        if charging:
            conn.execute(
                f"{columns} SELECT 'o' || c || '-' || n, 'peak-' || c || '-' || n,"
                "  %s, c || '-' || n, c, n, '\\x00', 'drawing', 2,"
                "  now() + interval '1 day', t, t, t, NULL, NULL, false, t, 900, t, 900, 0,"
                "  30, 'JPY'"
                " FROM unnest(%s::text[]) c, generate_series(1, 8) n,"
                "  LATERAL (SELECT to_timestamp(%s) AS t) x",
                (partner, controllers, MINUTE0 - 60),
            )
            conn.execute(
                "INSERT INTO outlet_current_state SELECT c, n, true, %s"
                " FROM unnest(%s::text[]) c, generate_series(1, 8) n",
                (MINUTE0 - 60, controllers),
            )
        conn.execute("TRUNCATE availability_changes")
        conn.execute("ANALYZE")


def batch(cid: str, seq: int, first_minute: int, frames: int) -> MeterBatch:
    return MeterBatch(
        controller_id=cid,
        seq=seq,
        frames=tuple(
            MeterFrame(
                minute=MINUTE0 + 60 * (first_minute + f),
                main_energy_wh=1e6 + f,
                outlets=tuple(
                    OutletReading(
                        outlet=n,
                        energy_wh=1000.0 + f * 50 + n,
                        voltage_v=200.0 + n / 10,
                        current_a=15.5,
                        breaker_on=True,
                    )
                    for n in range(1, 9)
                ),
            )
            for f in range(frames)
        ),
    )


@contextmanager
def amqtt_broker(tmp: Path) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "CHARGELINE_DATA_DIR": str(tmp / f"amqtt-{port}"),
        "CHARGELINE_LOG_LEVEL": "WARNING",
        # Like the Mosquitto beside it (allow_anonymous): these benchmarks measure the data
        # path; bench.broker measures both brokers with their access policy.
        "CHARGELINE_BROKER_ALLOW_ANONYMOUS": "true",
        # The whole fleet connects from loopback; in the field each site has its own address.
        "CHARGELINE_BROKER_MAX_CONNECTIONS_PER_ADDRESS": "100000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "chargeline", "broker", "--bind", f"127.0.0.1:{port}"], env=env
    )
    try:
        wait_port(port)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextmanager
def mosquitto_broker(tmp: Path) -> Iterator[str]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        raise SystemExit("mosquitto is not installed: apt-get install mosquitto")
    port = free_port()
    conf = tmp / f"mosquitto-{port}.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\n"
        "max_queued_messages 1000000\nmax_inflight_messages 0\npersistence false\n"
    )
    proc = subprocess.Popen(
        [exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_port(port)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def rows(url: str, table: str = "outlet_readings") -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        return int(row[0]) if row else 0


def database_mb(url: str) -> float:
    """The database's size on disk, for the figures (what the benchmark ran against)."""
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        return round(int(row[0]) / 2**20, 1) if row else 0.0


def now() -> float:
    return time.perf_counter()

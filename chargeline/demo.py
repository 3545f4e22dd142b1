"""``chargeline demo``: the telemetry path on one machine, with simulated controllers.

Starts (in this process) the embedded PostgreSQL unless ``CHARGELINE_DATABASE_URL`` is set,
the embedded broker unless ``CHARGELINE_MQTT_URL`` is set, applies migrations, registers a
sample site, then runs ingest and one simulated edge agent per controller with time
accelerated. Every few seconds it prints what the store holds; at the end, a summary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import time
from typing import Any

import psycopg

from chargeline import runner, services, settings
from ingest.registry import import_registry
from ingest.registry_file import ControllerEntry, OutletEntry, Registry, SiteEntry

SITE = "harbor-view"


def sample_registry(controllers: int, outlets: int) -> Registry:
    return Registry(
        sites=[
            SiteEntry(
                id=SITE,
                name="Harbor View Apartments",
                location="Toyama, JP",
                timezone="Asia/Tokyo",
                contract_current_a=200,
                tariff_per_kwh=31.5,
                currency="JPY",
            )
        ],
        controllers=[
            ControllerEntry(
                id=f"hv-ctl-{c:02d}",
                site=SITE,
                outlets=[
                    OutletEntry(number=n, outlet_id=f"HV-{c:02d}-{n}")
                    for n in range(1, outlets + 1)
                ],
            )
            for c in range(1, controllers + 1)
        ],
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(args: argparse.Namespace) -> int:
    if not 1 <= args.outlets <= 8:
        print("chargeline demo: --outlets must be 1..8")
        return 2
    if not 1 <= args.controllers <= 500:
        print("chargeline demo: --controllers must be 1..500")
        return 2
    common = settings.load(settings.IngestSettings, time_scale=args.time_scale)
    data_dir = common.data_dir / "demo"
    if args.fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    overrides: dict[str, Any] = {"data_dir": data_dir, "time_scale": args.time_scale}
    embedded_broker = "CHARGELINE_MQTT_URL" not in os.environ
    if embedded_broker:
        port = _free_port()
        overrides["mqtt_url"] = f"mqtt://127.0.0.1:{port}"
    ingest = settings.load(settings.IngestSettings, **overrides)
    print(f"chargeline demo: data in {data_dir.resolve()}")
    url = services.prepare_database(ingest)
    print(f"  database: {url}")
    print(f"  registry: {import_registry(url, sample_registry(args.controllers, args.outlets))}")
    print(f"  broker:   {ingest.mqtt!r}{' (embedded)' if embedded_broker else ''}")
    print(
        f"  time:     {args.time_scale:g}× (one simulated minute every {60 / args.time_scale:.2f} s)"
    )
    return runner.run(_run(args, ingest, url, embedded_broker, overrides))


async def _run(
    args: argparse.Namespace,
    ingest: settings.IngestSettings,
    url: str,
    embedded: bool,
    overrides: dict[str, Any],
) -> None:
    from broker.server import EmbeddedBroker

    started = time.monotonic()
    bind = f"127.0.0.1:{ingest.mqtt.port}"
    broker_settings = settings.load(settings.BrokerSettings, **overrides, broker_bind=bind)
    broker = EmbeddedBroker(broker_settings) if embedded else contextlib.nullcontext()
    async with broker, asyncio.TaskGroup() as tasks:
        services_running = [tasks.create_task(services.run_ingest(ingest, url), name="ingest")]
        for c in range(1, args.controllers + 1):
            edge = settings.load(
                settings.EdgeSettings,
                **overrides,
                controller_id=f"hv-ctl-{c:02d}",
                outlets=args.outlets,
                sim_autoplay=True,
                sample_interval_s=max(1.0, args.time_scale / 20),
                ack_timeout_s=10.0,
            )
            services_running.append(
                tasks.create_task(services.run_edge(edge), name=edge.controller_id)
            )
        try:
            await _report(url, args.duration, started)
        finally:
            for task in services_running:
                task.cancel()


_STATUS = """
SELECT count(*), count(DISTINCT minute), max(minute),
       count(*) FILTER (WHERE current_a > 0.5 AND minute = (SELECT max(minute) FROM outlet_readings)),
       (SELECT count(*) FROM dead_letters), (SELECT count(*) FROM meter_batches)
FROM outlet_readings
"""


async def _report(url: str, duration: float | None, started: float) -> None:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        while duration is None or time.monotonic() - started < duration:
            await asyncio.sleep(2)
            row = await (await conn.execute(_STATUS)).fetchone()
            assert row is not None
            readings, minutes, last, charging, dead, batches = row
            when = last.strftime("%H:%M UTC") if last else "—"
            print(
                f"[{time.monotonic() - started:5.0f}s] stored {readings:,} outlet readings over {minutes} "
                f"minutes in {batches:,} batches · latest minute {when} · {charging} outlets drawing "
                f"current · dead letters {dead}",
                flush=True,
            )
        await _summary(conn)


async def _summary(conn: psycopg.AsyncConnection[Any]) -> None:
    cur = await conn.execute(
        "SELECT outlet_id, round(sum(energy_wh)::numeric / 1000, 2) FROM energy_outlet_hourly"
        " GROUP BY 1 HAVING sum(energy_wh) > 0 ORDER BY 2 DESC LIMIT 5"
    )
    top = await cur.fetchall()
    row = await (
        await conn.execute("SELECT count(*), count(DISTINCT controller_id) FROM outlet_readings")
    ).fetchone()
    assert row is not None
    print(f"\nsummary: {row[0]:,} outlet readings from {row[1]} controllers")
    for outlet_id, kwh in top:
        print(f"  {outlet_id}: {kwh} kWh")
    print("try: SELECT * FROM energy_outlet_hourly ORDER BY hour DESC LIMIT 10;")

"""OCPP stations through ``chargeline ocpp``: how many one bridge holds, what a start costs
on a station against an outlet controller, and meter values per second into the store.

Everything runs as in production, on loopback: the embedded amqtt broker, PostgreSQL,
ingest, the authorization server, the gateway, one simulated edge agent (the baseline's
outlet controller), the bridge, and in a process of its own ``--stations`` simulated
stations (the ``ocpp`` package's charge point side, OCPP 1.6J, HTTP Basic), each sending
a Heartbeat and its meter values every minute.

Figures:

* ``connected``: stations connected at once; ``bridge_kib_per_station``: the bridge's
  resident memory with them all, less its memory before the first, per station.
  Target: ≥ 2,000 connected.
* ``start_ms`` (``station`` and ``controller``): partner's start → the station accepts and
  its transaction starts (the controller's breaker closes) → the HTTP answer, in the same
  run, alternating; ``ratio`` = station ÷ controller at p50 and p99. Target ≤ 2.
* ``meter_values_per_s``: ``--flood`` more stations connect, each with 60 minutes of meter
  values queued (a fleet back from an outage); meter values sent ÷ the seconds from their
  connecting until every minute is in ``outlet_readings``. The baseline is what the stations offer at 1 per
  minute each (``offered_per_s``): the flood's rate over it is the headroom.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx2
import psycopg
from authlib.integrations.httpx_client import OAuth2Client

from bench.common import database_mb, emit, parser, workdir
from bench.stack import Stack, ms, partner_stack, wait_online
from broker import identities
from broker.policy import Role
from kernel.stats import percentile
from store.registry import import_registry
from store.registry_file import ConnectorEntry, Registry, StationEntry
from tests.procs import free_port, rss_kib, wait_port

CID = "b0000"


def station_ids(count: int) -> list[str]:
    return [f"ST-{n:05d}" for n in range(count)]


def register(db: str, count: int) -> dict[str, str]:
    """``count`` 1.6J stations (one AC connector each) and their passwords, by station id."""
    registry = Registry(
        stations=[
            StationEntry(
                id=sid,
                controller_id=sid.lower(),
                site="bench",
                ocpp_version="1.6",
                connectors=[ConnectorEntry(number=1, outlet_id=f"{sid}-1", rated_current_a=32)],
            )
            for sid in station_ids(count)
        ]
    )
    import_registry(db, registry)
    with psycopg.connect(db, autocommit=True) as conn:
        return {
            sid: identities.issue(conn, sid.lower(), Role.STATION) for sid in station_ids(count)
        }


@contextmanager
def bridge(stack: Stack, tmp: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "CHARGELINE_DATABASE_URL": stack.db,
        "CHARGELINE_MQTT_URL": stack.mqtt_url,
        "CHARGELINE_DATA_DIR": str(tmp / "data"),
        "CHARGELINE_LOG_LEVEL": "WARNING",
        "CHARGELINE_OCPP_BIND": f"127.0.0.1:{port}",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "chargeline", "ocpp"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        yield proc
    finally:
        proc.terminate()
        proc.wait(30)


# --- the stations' process --------------------------------------------------------------


async def _load(url: str, passwords: dict[str, str], flood: int) -> None:
    """Connect every station but the last ``flood``; on ``flood`` from stdin, connect those,
    each with an hour of meter values queued (a station back from an outage). Reports on
    stdout: ``connected N``."""
    from ocpp.v16 import call as c16

    from ocpp_bridge.simulated import Car, Plug, SimulatedStation

    def station(sid: str) -> SimulatedStation:
        return SimulatedStation(
            url=url,
            station_id=sid,
            password=passwords[sid],
            version="1.6",
            plugs=[Plug(connector=1, car=Car(current_a=0.0))],
            clock=time.time,
        )

    ids = list(passwords)
    live, later = [station(sid) for sid in ids[: len(ids) - flood]], ids[len(ids) - flood :]
    tasks = []
    for i, s in enumerate(live):
        tasks.append(asyncio.create_task(s.run()))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # stations connect over seconds, not in one instant
    while True:
        await asyncio.sleep(1)
        connected = sum(s.connected.is_set() for s in live)
        print(f"connected {connected}", flush=True)
        if connected == len(live):
            break
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while (line := (await reader.readline()).decode().strip()) != "flood":
        if not line:
            return
    hour_ago = (int(time.time()) // 60 - 61) * 60
    for sid in later:
        s = station(sid)
        plug = s.plugs[0]
        for m in range(60):
            plug.register_wh += 100.0
            sample = s.meter_value(plug, hour_ago + 60 * m + 1)
            s.post(c16.MeterValues(connector_id=1, meter_value=[sample]))
        tasks.append(asyncio.create_task(s.run()))
    await reader.readline()  # until the bench is done


# --- the bench ----------------------------------------------------------------------------


def starts(stack: Stack, samples: int, station_outlet: str) -> tuple[list[float], list[float]]:
    """Alternating starts (each answered with the charge on) and stops, on the station's
    connector and on the controller's outlet 1; (station times, controller times)."""
    times: dict[str, list[float]] = {station_outlet: [], f"{CID}-1": []}
    client = stack.client
    with OAuth2Client(
        client.client_id, client.client_secret, token_endpoint=stack.token_url
    ) as oauth:
        oauth.fetch_token(grant_type="client_credentials")
        for i in range(samples + 3):
            for outlet, taken in times.items():
                charge = f"b-{outlet}-{i}"
                start = time.perf_counter()
                response: httpx2.Response = oauth.post(
                    f"{stack.api}/v1/charges", json={"outlet_id": outlet, "charge_id": charge}
                )
                elapsed = time.perf_counter() - start
                if response.status_code != 201 or response.json()["state"] != "on":
                    raise SystemExit(
                        f"start on {outlet} answered {response.status_code}: {response.text}"
                    )
                if i >= 3:
                    taken.append(elapsed)
                stop = oauth.post(f"{stack.api}/v1/charges/{charge}/stop")
                if stop.status_code != 200:
                    raise SystemExit(f"stop on {outlet}: {stop.status_code} {stop.text}")
                _until_stopped(stack.db, charge)
    station, controller = times.values()
    return station, controller


def _until_stopped(db: str, charge: str) -> None:
    """The next start on an outlet needs the last one's transaction (breaker) closed."""
    deadline = time.monotonic() + 30
    with psycopg.connect(db) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT state FROM charges WHERE partner_charge_id = %s", (charge,)
            ).fetchone()
            if row and row[0] in ("stopped", "failed"):
                return
            time.sleep(0.01)
    raise SystemExit(f"{charge} did not stop")


def station_rows(db: str, count: int) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute(
            "SELECT count(*) FROM outlet_readings WHERE controller_id = ANY(%s)",
            ([sid.lower() for sid in station_ids(count)],),
        ).fetchone()
    return int(row[0]) if row else 0


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--stations", type=int, help="stations to connect (default 2000; quick 200)")
    p.add_argument(
        "--flood",
        type=int,
        help="stations that come back with an hour of meter values (default 200; quick 50)",
    )
    p.add_argument("--load", nargs=2, metavar=("URL", "FILE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.load:
        passwords = json.loads(Path(args.load[1]).read_text())
        asyncio.run(_load(args.load[0], passwords, args.flood or 0))
        return
    count = args.stations or (200 if args.quick else 2000)
    flood = args.flood or (50 if args.quick else 200)
    samples = 30 if args.quick else 150
    figures: dict[str, Any] = {"stations": count, "flood_stations": flood, "samples": samples}
    with ExitStack() as stack_:
        tmp = stack_.enter_context(workdir())
        stack = stack_.enter_context(
            partner_stack(tmp, [CID], scopes=["charges:write", "charges:read"])
        )
        t0 = time.perf_counter()
        passwords = register(stack.db, count + flood)
        print(
            f"{count + flood} stations registered in {time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        port = free_port()
        proc = stack_.enter_context(bridge(stack, tmp, port))
        time.sleep(2)
        idle_kib = rss_kib(proc.pid)
        secrets = tmp / "stations.json"
        secrets.write_text(json.dumps(passwords))
        load = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.ocpp",
                "--load",
                f"ws://127.0.0.1:{port}/ocpp",
                str(secrets),
                "--flood",
                str(flood),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        t_load = time.perf_counter()
        stack_.callback(load.kill)
        figures["connect_all_s"] = _connected(load, count)
        wait_online(stack.db, [sid.lower() for sid in station_ids(count)], timeout=120)
        figures["online_in_cloud_s"] = round(time.perf_counter() - t_load, 1)
        time.sleep(3)
        figures["connected"] = count
        figures["bridge_kib_per_station"] = round((rss_kib(proc.pid) - idle_kib) / count, 1)
        station, controller = starts(stack, samples, f"{station_ids(count)[-1]}-1")
        figures["start_ms"] = {
            "station": {"p50": ms(percentile(station, 50)), "p99": ms(percentile(station, 99))},
            "controller": {
                "p50": ms(percentile(controller, 50)),
                "p99": ms(percentile(controller, 99)),
            },
        }
        figures["ratio"] = {
            q: round(percentile(station, n) / percentile(controller, n), 2)
            for q, n in (("p50", 50), ("p99", 99))
        }
        figures["meter_values_per_s"] = _flood(load, stack.db, count + flood, flood)
        figures["offered_per_s"] = round(count / 60, 1)
        figures["database_mb"] = database_mb(stack.db)
    print(
        f"{figures['connected']} stations connected ({figures['bridge_kib_per_station']} KiB"
        f" each in the bridge); start on a station p50 {figures['start_ms']['station']['p50']} ms"
        f" p99 {figures['start_ms']['station']['p99']} ms vs a controller p50"
        f" {figures['start_ms']['controller']['p50']} ms p99"
        f" {figures['start_ms']['controller']['p99']} ms (ratio {figures['ratio']});"
        f" {figures['meter_values_per_s']} meter values/s into the store",
        file=sys.stderr,
    )
    emit("ocpp", figures)


def _connected(load: subprocess.Popen[str], count: int) -> float:
    """Seconds until the stations' process reports all ``count`` connected."""
    assert load.stdout is not None
    t0 = time.perf_counter()
    connected = 0
    while connected < count:
        line = load.stdout.readline()
        if not line:
            raise SystemExit("the stations' process ended")
        connected = int(line.split()[1])
    return round(time.perf_counter() - t0, 1)


def _flood(load: subprocess.Popen[str], db: str, count: int, flood: int) -> float:
    """Meter values per second from the flood's stations into the store."""
    assert load.stdin is not None
    wanted = station_rows(db, count) + flood * 59  # each one's last minute waits for the next
    load.stdin.write("flood\n")
    load.stdin.flush()
    t0 = time.perf_counter()
    while station_rows(db, count) < wanted:
        if time.perf_counter() - t0 > 600:
            raise SystemExit("the flood's minutes never all arrived")
        time.sleep(0.2)
    return round(flood * 60 / (time.perf_counter() - t0), 1)


if __name__ == "__main__":
    main()

"""``chargeline demo``: the whole system on one machine, with a simulated partner and
residents.

In one process tree, on embedded defaults:

* this process: PostgreSQL (embedded unless ``CHARGELINE_DATABASE_URL`` is set), the
  broker (embedded unless ``CHARGELINE_MQTT_URL`` is set), migrations, the sample site's
  registry, ingest, one simulated edge agent per controller, the OCPP bridge with the
  site's two simulated OCPP stations (an AC wallbox on 1.6J, a DC fast charger on 2.0.1),
  and the partner (an OAuth2 client with a webhook receiver) whose residents play the
  field operation flow (``residents``);
* child processes, as in production: the authorization server and the gateway.

Time runs ``--time-scale`` times faster (default: a minute per second). After
``--duration`` seconds, or at Ctrl-C, the residents come back and stop their charges, the
last webhooks are delivered, and a summary is printed and written to ``summary.json``. A
second Ctrl-C stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import psycopg

from broker.settings import BrokerSettings
from chargeline import services
from chargeline.demo import stack, view
from chargeline.demo.partner import Partner, Tally
from chargeline.demo.residents import ENDED_WITHIN_S, World
from chargeline.demo.site import STATIONS, controller_id_of, sample_registry
from cloud_gateway.clients import SCOPES, NewClient, add_client
from edge_agent.settings import EdgeSettings
from edge_agent.simulated import SimulatedSite
from ingest.settings import IngestSettings
from kernel import runner, settings
from load_manager.settings import LoadSettings
from ocpp_bridge.settings import OcppSettings
from ocpp_bridge.simulated import Car, Plug, SimulatedStation
from store.database import prepare_database
from store.registry import import_registry

#: How long the closing residents, and then the last webhooks, may take.
WIND_DOWN_S = ENDED_WITHIN_S + 30  # the residents see their charges end, then the rest


def main(args: argparse.Namespace) -> int:
    problem = _argument_problem(args)
    if problem is not None:
        print(f"chargeline demo: {problem}", file=sys.stderr)
        return 2
    ingest, url, logins, overrides = _prepare(args)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM outlet_readings").fetchone()
    live = sys.stdout.isatty() and not args.plain
    return runner.run(
        _run(
            args,
            ingest,
            url,
            logins,
            overrides,
            live=live,
            readings_before=row[0] if row else 0,
        )
    )


def _argument_problem(args: argparse.Namespace) -> str | None:
    if not 1 <= args.outlets <= 8:
        return "--outlets must be 1..8"
    if not 1 <= args.controllers <= 100:
        return "--controllers must be 1..100"
    if not 1 <= args.time_scale <= 600:
        return "--time-scale must be 1..600"
    if args.duration is not None and not args.duration > 0:
        return "--duration must be a positive number of seconds"
    return None


def _prepare(
    args: argparse.Namespace,
) -> tuple[IngestSettings, str, dict[str, str], dict[str, Any]]:
    """The data directory, the database and its registry, the broker's logins and one
    accelerated clock for every process; (ingest's settings, the database URL, the
    logins, the settings every process shares)."""
    common = settings.load(IngestSettings, time_scale=args.time_scale)
    data_dir = (common.data_dir / "demo").resolve()
    if args.fresh and data_dir.exists():
        shutil.rmtree(data_dir)
    (data_dir / "logs").mkdir(parents=True, exist_ok=True)
    _log_to(data_dir / "logs" / "demo.log")
    # Every process (the edges here, the gateway in its own) runs on one accelerated clock.
    overrides: dict[str, Any] = {
        "data_dir": data_dir,
        "time_scale": args.time_scale,
        "time_origin": time.time(),
    }
    embedded_broker = "CHARGELINE_MQTT_URL" not in os.environ
    if embedded_broker:
        overrides["mqtt_url"] = f"mqtt://127.0.0.1:{stack.free_port()}"
    ingest = settings.load(IngestSettings, **overrides)
    print(f"chargeline demo: data in {data_dir}")
    url = prepare_database(ingest)
    print(f"  database: {url}")
    # A run on the same data starts its clock after everything the earlier runs stored,
    # so its minutes and charges are its own (an accelerated clock from now would replay
    # minutes an earlier run already filled).
    origin = time_origin_after(url, args.time_scale)
    if origin is not None:
        overrides["time_origin"] = origin
        ingest = ingest.model_copy(update={"time_origin": origin})
    print(f"  registry: {import_registry(url, sample_registry(args.controllers, args.outlets))}")
    logins = stack.issue_logins(url, args.controllers) if embedded_broker else {}
    if logins:
        ingest = ingest.model_copy(
            update={"mqtt_url": stack.login(ingest.mqtt_url, logins, stack.INGEST)}
        )
    print(f"  broker:   {ingest.mqtt!r}{' (embedded)' if embedded_broker else ''}")
    if logins:
        print(f"            {len(logins)} identities with fresh passwords (registry, argon2)")
    print(
        f"  time:     {args.time_scale:g}× (one simulated minute every {60 / args.time_scale:.2f} s)",
        flush=True,
    )
    return ingest, url, logins, overrides


async def _run(
    args: argparse.Namespace,
    ingest: IngestSettings,
    url: str,
    logins: dict[str, str],
    overrides: dict[str, Any],
    *,
    live: bool,
    readings_before: int,
) -> None:
    from broker.server import EmbeddedBroker

    started = time.monotonic()
    controllers = [controller_id_of(c) for c in range(1, args.controllers + 1)]
    broker_settings = settings.load(
        BrokerSettings, **overrides, broker_bind=f"127.0.0.1:{ingest.mqtt.port}"
    )
    broker = EmbeddedBroker(broker_settings, url) if logins else contextlib.nullcontext()
    tally = Tally()
    async with broker, asyncio.TaskGroup() as tasks:
        ingesting = tasks.create_task(services.run_ingest(ingest, url), name="ingest")
        sites, background = _start_edges(tasks, controllers, args, overrides, logins)
        background.append(ingesting)
        plugs, bridging = _start_stations(tasks, url, args, overrides, logins)
        background += bridging
        background.append(_start_loads(tasks, url, overrides, logins))
        try:
            async with (
                stack.cloud(url, ingest, stack.login(ingest.mqtt_url, logins, stack.GATEWAY)) as (
                    api,
                    token_url,
                ),
                await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
            ):
                await stack.wait_online(conn, controllers + [st.controller_id for st in STATIONS])
                port = stack.free_port()
                client = _register_partner(url, port)
                partner = Partner(
                    client, api=api, token_url=token_url, port=port, tally=tally, now=ingest.now
                )
                async with partner.running():
                    world = World(
                        partner, sites, time_scale=args.time_scale, seed=args.seed, stations=plugs
                    )
                    await _play(world, tally, conn, client.client_id, args.duration, live=live)
                    # Ingest stops first, so the summary's figures are the database's.
                    # Whatever it had not written was not acknowledged either: the edges
                    # keep it in their buffers and send it again next run.
                    ingesting.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ingesting
                    final = await view.counters(conn, client.client_id)
                summary = view.summary(
                    tally,
                    final,
                    readings_before=readings_before,
                    running=len(world.charges),
                    database=url,
                    data_dir=ingest.data_dir,
                    seconds=time.monotonic() - started,
                    shell=f"CHARGELINE_DATA_DIR={ingest.data_dir} {_chargeline()} db shell",
                )
            view.write_summary(summary, ingest.data_dir / "summary.json")
            view.print_summary(summary)
        finally:
            for task in background:
                task.cancel()


def _start_edges(
    tasks: asyncio.TaskGroup,
    controllers: list[str],
    args: argparse.Namespace,
    overrides: dict[str, Any],
    logins: dict[str, str],
) -> tuple[dict[str, SimulatedSite], list[asyncio.Task[None]]]:
    """One simulated edge agent per controller, in ``tasks``; (their sites, their tasks)."""
    sites: dict[str, SimulatedSite] = {}
    running = []
    for cid in controllers:
        edge = settings.load(
            EdgeSettings,
            **{**overrides, "mqtt_url": stack.login(overrides.get("mqtt_url"), logins, cid)},
            controller_id=cid,
            outlets=args.outlets,
            sim_autoplay=False,
            sample_interval_s=max(1.0, args.time_scale / 20),
            load_report_s=LOAD_PERIOD_S,
        )
        agent = services.simulated_agent(edge, arrivals=False)
        assert isinstance(agent.meter, SimulatedSite)
        sites[cid] = agent.meter
        running.append(tasks.create_task(services.run_agent(agent), name=cid))
    return sites, running


#: The allocator's period, and how often the edges report their load (real seconds).
LOAD_PERIOD_S = 2.0


def _start_loads(
    tasks: asyncio.TaskGroup, url: str, overrides: dict[str, Any], logins: dict[str, str]
) -> asyncio.Task[None]:
    """The sites' allocator: the demo's site is oversubscribed at its busiest, and charges
    wait their turn (queued, paused) rather than trip its main breaker."""
    loads = settings.load(
        LoadSettings,
        **{**overrides, "mqtt_url": stack.login(overrides.get("mqtt_url"), logins, stack.LOADS)},
        period_s=LOAD_PERIOD_S,
    )
    return tasks.create_task(services.run_loads(loads, url), name="loads")


def _start_stations(
    tasks: asyncio.TaskGroup,
    url: str,
    args: argparse.Namespace,
    overrides: dict[str, Any],
    logins: dict[str, str],
) -> tuple[dict[str, Plug], list[asyncio.Task[None]]]:
    """The OCPP bridge, and the site's two stations (the ``ocpp`` package's charge point
    side) connected to it with their passwords; (each connector's plug by outlet id, the
    tasks)."""
    port = stack.free_port()
    bridge = settings.load(
        OcppSettings,
        **{**overrides, "mqtt_url": stack.login(overrides.get("mqtt_url"), logins, stack.OCPP)},
        ocpp_bind=f"127.0.0.1:{port}",
    )
    running = [tasks.create_task(services.run_ocpp(bridge, url), name="ocpp")]
    passwords = stack.issue_station_passwords(url)
    plugs: dict[str, Plug] = {}
    for st in STATIONS:
        dc = st.current_type == "DC"
        plug = Plug(connector=1, evse=1, car=Car(current_a=0.0, voltage_v=400.0 if dc else 200.0))
        station = SimulatedStation(
            url=f"ws://127.0.0.1:{port}/ocpp",
            station_id=st.station_id,
            password=passwords[st.station_id],
            version=st.version,
            plugs=[plug],
            clock=bridge.now,
            time_scale=args.time_scale,
            model="fast charger" if dc else "wallbox",
        )
        plugs[st.outlet_id] = plug
        running.append(tasks.create_task(station.run(), name=st.station_id))
    return plugs, running


def _register_partner(url: str, port: int) -> NewClient:
    """The demo's partner, with every scope and its webhook receiver on ``port``."""
    return add_client(
        url,
        f"WeCharge demo {time.strftime('%Y-%m-%d %H:%M:%S')}",
        list(SCOPES),
        f"http://127.0.0.1:{port}/hooks",
        allow_private=True,  # the demo's partner is on this machine
    )


def time_origin_after(url: str, scale: float) -> float | None:
    """A time origin whose accelerated clock starts a minute after the latest minute or
    charge time stored by earlier runs; None when nothing is stored, or at 1×."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM greatest("
            " (SELECT max(minute) FROM outlet_readings),"
            " (SELECT max(greatest(requested_at, started_at, stopped_at, end_at)) FROM charges)"
            "))::float8"
        ).fetchone()
    latest: float | None = float(row[0]) if row and row[0] is not None else None
    real = time.time()
    if latest is None or scale <= 1 or latest + 60 <= real:
        return None
    start = latest + 60
    # origin + (real - origin) * scale == start
    return (real * scale - start) / (scale - 1)


def _chargeline() -> str:
    """How this user runs chargeline: by name when the command on the PATH is this one,
    else by its path (the venv's script); ``python -m chargeline`` runs it by name too."""
    here = Path(sys.argv[0]).resolve()
    if here.name != "chargeline":
        return "chargeline"
    on_path = shutil.which("chargeline")
    return "chargeline" if on_path and Path(on_path).resolve() == here else str(here)


async def _play(
    world: World,
    tally: Tally,
    conn: psycopg.AsyncConnection[Any],
    client_id: str,
    duration: float | None,
    *,
    live: bool,
) -> None:
    """Residents play for ``duration`` (or until Ctrl-C); then everything winds down."""
    shown = view.View(world, tally, conn, client_id, live=live)
    playing = asyncio.create_task(world.play(), name="residents")
    showing = asyncio.create_task(shown.run(), name="view")
    try:
        await asyncio.wait({playing}, timeout=duration)
    except asyncio.CancelledError:  # Ctrl-C: wind down; a second one stops at once
        task = asyncio.current_task()
        assert task is not None
        task.uncancel()
    world.closing.set()
    tally.say(f"closing: residents stop their {len(world.charges)} running charges")
    if not live:
        print(f"closing: stopping {len(world.charges)} running charges", flush=True)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(playing, WIND_DOWN_S)
    deadline = time.monotonic() + WIND_DOWN_S
    while time.monotonic() < deadline:  # the last webhooks reach the partner
        c = await view.counters(conn, client_id)
        if c.undelivered == c.gave_up:
            break
        await asyncio.sleep(0.2)
    showing.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await showing
    if not live:
        for line in shown.feed_lines():
            print(f"  {line}", flush=True)


def _log_to(path: Path) -> None:
    """This process's log (ingest, edges, broker) goes to a file: the terminal shows the
    view and the summary."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one line per partner call

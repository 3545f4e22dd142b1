"""``chargeline demo``: the whole system on one machine, with a simulated partner and
residents.

In one process tree, on embedded defaults:

* this process: PostgreSQL (embedded unless ``CHARGELINE_DATABASE_URL`` is set), the
  broker (embedded unless ``CHARGELINE_MQTT_URL`` is set), migrations, the sample site's
  registry, ingest, one simulated edge agent per controller, and the partner (an OAuth2
  client with a webhook receiver) whose residents play the field operation flow
  (``residents``);
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
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg

from broker import identities
from broker.identities import DEFAULT_SERVICE_NAMES
from broker.policy import Role
from broker.settings import BrokerSettings
from chargeline import services
from chargeline.demo import view
from chargeline.demo.partner import Partner, Tally
from chargeline.demo.residents import ENDED_WITHIN_S, World
from chargeline.demo.site import controller_id_of, sample_registry
from cloud_gateway.clients import add_client
from edge_agent.settings import EdgeSettings
from edge_agent.simulated import SimulatedSite
from ingest.settings import IngestSettings
from kernel import runner, settings
from store.database import prepare_database
from store.registry import import_registry

#: How long the closing residents, and then the last webhooks, may take.
WIND_DOWN_S = ENDED_WITHIN_S + 30  # the residents see their charges end, then the rest


def main(args: argparse.Namespace) -> int:
    if not 1 <= args.outlets <= 8:
        print("chargeline demo: --outlets must be 1..8", file=sys.stderr)
        return 2
    if not 1 <= args.controllers <= 100:
        print("chargeline demo: --controllers must be 1..100", file=sys.stderr)
        return 2
    if not 1 <= args.time_scale <= 600:
        print("chargeline demo: --time-scale must be 1..600", file=sys.stderr)
        return 2
    if args.duration is not None and not args.duration > 0:
        print("chargeline demo: --duration must be a positive number of seconds", file=sys.stderr)
        return 2
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
        overrides["mqtt_url"] = f"mqtt://127.0.0.1:{_free_port()}"
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
    logins = _issue_logins(url, args.controllers) if embedded_broker else {}
    if logins:
        ingest = ingest.model_copy(update={"mqtt_url": _login(ingest.mqtt_url, logins, INGEST)})
    print(f"  broker:   {ingest.mqtt!r}{' (embedded)' if embedded_broker else ''}")
    if logins:
        print(f"            {len(logins)} identities with fresh passwords (registry, argon2)")
    print(
        f"  time:     {args.time_scale:g}× (one simulated minute every {60 / args.time_scale:.2f} s)",
        flush=True,
    )
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
        background = [ingesting]
        sites: dict[str, SimulatedSite] = {}
        for cid in controllers:
            edge = settings.load(
                EdgeSettings,
                **{**overrides, "mqtt_url": _login(overrides.get("mqtt_url"), logins, cid)},
                controller_id=cid,
                outlets=args.outlets,
                sim_autoplay=False,
                sample_interval_s=max(1.0, args.time_scale / 20),
            )
            agent = services.simulated_agent(edge, arrivals=False)
            assert isinstance(agent.meter, SimulatedSite)
            sites[cid] = agent.meter
            background.append(tasks.create_task(services.run_agent(agent), name=cid))
        try:
            async with (
                _cloud(url, ingest, _login(ingest.mqtt_url, logins, GATEWAY)) as (api, token_url),
                await psycopg.AsyncConnection.connect(url, autocommit=True) as conn,
            ):
                await _wait_online(conn, controllers)
                port = _free_port()
                client = add_client(
                    url,
                    f"WeCharge demo {time.strftime('%Y-%m-%d %H:%M:%S')}",
                    ["charges:write", "charges:read", "outlets:read", "usage:read"],
                    f"http://127.0.0.1:{port}/hooks",
                    allow_private=True,  # the demo's partner is on this machine
                )
                partner = Partner(
                    client, api=api, token_url=token_url, port=port, tally=tally, now=ingest.now
                )
                async with partner.running():
                    world = World(partner, sites, time_scale=args.time_scale, seed=args.seed)
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


INGEST, GATEWAY = DEFAULT_SERVICE_NAMES[Role.INGEST], DEFAULT_SERVICE_NAMES[Role.GATEWAY]


def _issue_logins(url: str, controllers: int) -> dict[str, str]:
    """Fresh passwords for the sample site's controllers and the two services.

    The demo's broker checks them like any other: a password is shown once and only its
    hash is kept, so every run issues new ones (rotating the last run's).
    """
    names = [(controller_id_of(c), Role.CONTROLLER) for c in range(1, controllers + 1)]
    names += [(INGEST, Role.INGEST), (GATEWAY, Role.GATEWAY)]
    with psycopg.connect(url, autocommit=True) as conn:
        return {name: identities.issue(conn, name, role) for name, role in names}


def _login(url: str | None, logins: dict[str, str], name: str) -> str | None:
    """``url`` logged in as ``name`` (unchanged on an external broker: no logins)."""
    if url is None or name not in logins:
        return url
    return settings.MqttUrl.with_login(url, name, logins[name])


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


@contextlib.asynccontextmanager
async def _cloud(
    url: str, ingest: IngestSettings, mqtt_url: str | None
) -> AsyncIterator[tuple[str, str]]:
    """The authorization server and the gateway as child processes; (API, token URL)."""
    auth_port, api_port = _free_port(), _free_port()
    issuer = f"http://127.0.0.1:{auth_port}"
    env = {
        **os.environ,
        "CHARGELINE_DATABASE_URL": url,
        "CHARGELINE_MQTT_URL": mqtt_url or ingest.mqtt_url,
        "CHARGELINE_DATA_DIR": str(ingest.data_dir),
        "CHARGELINE_TIME_SCALE": str(ingest.time_scale),
        "CHARGELINE_TIME_ORIGIN": repr(ingest.time_origin),
        "CHARGELINE_LOG_LEVEL": "INFO",
        "CHARGELINE_ISSUER": issuer,
        "CHARGELINE_WEBHOOK_ALLOW_PRIVATE": "true",  # the demo's partner is on this machine
        "CHARGELINE_AUTH_BIND": f"127.0.0.1:{auth_port}",
        "CHARGELINE_API_BIND": f"127.0.0.1:{api_port}",
    }
    procs: list[asyncio.subprocess.Process] = []
    try:
        for name, port in (("auth", auth_port), ("gateway", api_port)):
            log = (ingest.data_dir / "logs" / f"{name}.log").open("ab")
            # Their own session: Ctrl-C in the terminal reaches only the demo, which
            # winds down through them and then stops them.
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "chargeline",
                name,
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=runner.die_with_parent,  # a demo killed outright takes them along
            )
            log.close()
            procs.append(proc)
            await _wait_port(port, proc, name, ingest.data_dir)
        yield f"http://127.0.0.1:{api_port}", f"{issuer}/oauth2/token"
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.terminate()
        for proc in procs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 15)
            if proc.returncode is None:
                proc.kill()


async def _wait_port(
    port: int, proc: asyncio.subprocess.Process, name: str, data_dir: Path
) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise SystemExit(
                f"chargeline demo: the {name} server exited ({proc.returncode});"
                f" see {data_dir / 'logs' / f'{name}.log'}"
            )
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.1)
    raise SystemExit(f"chargeline demo: the {name} server did not listen on {port}")


async def _wait_online(conn: psycopg.AsyncConnection[Any], controllers: list[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cur = await conn.execute(
            "SELECT count(*) FROM controller_status WHERE controller_id = ANY(%s) AND online",
            (controllers,),
        )
        row = await cur.fetchone()
        if row and row[0] == len(controllers):
            return
        await asyncio.sleep(0.2)
    raise SystemExit("chargeline demo: the simulated controllers did not come online")


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

"""The demo's running parts beside its own process: the broker logins it issues, the
authorization server and the gateway as child processes, and waiting for them."""

from __future__ import annotations

import asyncio
import contextlib
import os
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
from chargeline.demo.site import STATIONS, controller_id_of
from ingest.settings import IngestSettings
from kernel import runner, settings

INGEST, GATEWAY = DEFAULT_SERVICE_NAMES[Role.INGEST], DEFAULT_SERVICE_NAMES[Role.GATEWAY]
OCPP = DEFAULT_SERVICE_NAMES[Role.OCPP]
LOADS = DEFAULT_SERVICE_NAMES[Role.LOADS]


def issue_logins(url: str, controllers: int) -> dict[str, str]:
    """Fresh passwords for the sample site's controllers and the four services.

    The demo's broker checks them like any other: a password is shown once and only its
    hash is kept, so every run issues new ones (rotating the last run's).
    """
    names = [(controller_id_of(c), Role.CONTROLLER) for c in range(1, controllers + 1)]
    names += [
        (INGEST, Role.INGEST),
        (GATEWAY, Role.GATEWAY),
        (OCPP, Role.OCPP),
        (LOADS, Role.LOADS),
    ]
    with psycopg.connect(url, autocommit=True) as conn:
        return {name: identities.issue(conn, name, role) for name, role in names}


def issue_station_passwords(url: str) -> dict[str, str]:
    """Fresh OCPP passwords for the sample site's stations, by station id (their HTTP
    Basic username), whichever broker the demo uses."""
    with psycopg.connect(url, autocommit=True) as conn:
        return {
            st.station_id: identities.issue(conn, st.controller_id, Role.STATION) for st in STATIONS
        }


def login(url: str | None, logins: dict[str, str], name: str) -> str | None:
    """``url`` logged in as ``name`` (unchanged on an external broker: no logins)."""
    if url is None or name not in logins:
        return url
    return settings.MqttUrl.with_login(url, name, logins[name])


@contextlib.asynccontextmanager
async def cloud(
    url: str, ingest: IngestSettings, mqtt_url: str | None
) -> AsyncIterator[tuple[str, str]]:
    """The authorization server and the gateway as child processes; (API, token URL)."""
    auth_port, api_port = free_port(), free_port()
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


async def wait_online(conn: psycopg.AsyncConnection[Any], controllers: list[str]) -> None:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])

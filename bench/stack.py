"""The partner-side stack for benchmarks: everything as in production, on loopback.

``partner_stack`` starts the embedded amqtt broker (or Mosquitto), a fresh database, ingest, the
authorization server, the gateway (uvicorn) and one simulated edge agent per controller,
waits until they answer, and hands back where they are and a registered OAuth2 client.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg

from bench.common import amqtt_broker, database, mosquitto_broker
from cloud_gateway.clients import NewClient, add_client
from tests.procs import free_port, wait_port


@dataclass(frozen=True)
class Stack:
    db: str
    mqtt_url: str
    api: str
    token_url: str
    client: NewClient


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


@contextmanager
def service(args: list[str], env: dict[str, str]) -> Iterator[None]:
    """A chargeline subprocess, terminated on exit."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "chargeline", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(15)


def wait_online(db: str, controllers: list[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(db) as conn:
            row = conn.execute(
                "SELECT count(*) FROM controller_status WHERE controller_id = ANY(%s) AND online",
                (controllers,),
            ).fetchone()
        if row and row[0] == len(controllers):
            return
        time.sleep(0.2)
    raise SystemExit("the edge agents never came online")


@contextmanager
def partner_stack(
    tmp: Path,
    controllers: list[str],
    *,
    scopes: list[str],
    webhook_url: str | None = None,
    env: dict[str, str] | None = None,
    edge_env: dict[str, str] | None = None,
    edges: bool | Sequence[str] = True,
    broker: str = "amqtt",
) -> Iterator[Stack]:
    """Everything a partner talks to; ``env`` adds settings for every process. ``edges``:
    a simulated edge agent for every controller (True), none, or for those listed.
    ``broker``: ``amqtt`` (the embedded broker, the default deployment) or ``mosquitto``
    (what the design moves to beyond a few hundred controllers)."""
    with_edges = list(controllers) if edges is True else list(edges or [])
    brokers = {"amqtt": amqtt_broker, "mosquitto": mosquitto_broker}
    with ExitStack() as stack:
        url = stack.enter_context(brokers[broker](tmp))
        db = database(tmp, controllers)
        client = add_client(db, "bench", scopes, webhook_url, allow_private=True)
        auth_port, api_port = free_port(), free_port()
        common = {
            "CHARGELINE_DATABASE_URL": db,
            "CHARGELINE_MQTT_URL": url,
            "CHARGELINE_DATA_DIR": str(tmp / "data"),
            "CHARGELINE_LOG_LEVEL": "WARNING",
            "CHARGELINE_ISSUER": f"http://127.0.0.1:{auth_port}",
            "CHARGELINE_WEBHOOK_ALLOW_PRIVATE": "true",
            "CHARGELINE_AUTH_BIND": f"127.0.0.1:{auth_port}",
            "CHARGELINE_API_BIND": f"127.0.0.1:{api_port}",
            # the benchmarks measure the servers, not the per-client limits
            "CHARGELINE_API_RATE_PER_S": "1000000",
            "CHARGELINE_API_BURST": "1000000",
            "CHARGELINE_TOKEN_RATE_PER_S": "1000000",
            "CHARGELINE_TOKEN_BURST": "1000000",
            "CHARGELINE_TOKEN_SOURCE_RATE_PER_S": "1000000",
            "CHARGELINE_TOKEN_SOURCE_BURST": "1000000",
            **(env or {}),
        }
        stack.enter_context(service(["ingest"], common))
        stack.enter_context(service(["auth"], common))
        stack.enter_context(service(["gateway"], common))
        if with_edges:
            for cid in with_edges:
                edge = {"CHARGELINE_SIM_AUTOPLAY": "false", **common, **(edge_env or {})}
                stack.enter_context(service(["edge", "--controller-id", cid], edge))
        wait_port(auth_port)
        wait_port(api_port)
        if with_edges:
            wait_online(db, with_edges)
        yield Stack(
            db,
            url,
            f"http://127.0.0.1:{api_port}",
            f"http://127.0.0.1:{auth_port}/oauth2/token",
            client,
        )

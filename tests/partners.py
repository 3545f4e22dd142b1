"""A partner of the running stack, for the end-to-end tests: its OAuth2 client (authlib), its webhook receiver, and the helpers its tests share. The ``partner`` fixture is registered in conftest (``pytest_plugins``)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import psycopg
import pytest
from authlib.integrations.httpx_client import OAuth2Client

from cloud_gateway.clients import NewClient, add_client
from kernel import mqtt
from kernel.settings import MqttUrl
from schemas.codec import encode
from schemas.messages import Presence
from schemas.topics import Topics
from store import roles
from tests.conftest import Installation
from tests.db import query
from tests.procs import Proc, free_port, wait_for, wait_port
from tests.receiver import Receiver

SCALE = 60.0  # edge time: a minute reading every real second


@dataclass
class Partner:
    api: str
    oauth: OAuth2Client
    client: NewClient
    receiver: Receiver
    reader_token: str
    edge: Proc
    token_url: str
    #: Each process's ops listener (/healthz, /readyz, /metrics), by process.
    ops: dict[str, str] = field(default_factory=dict)

    def post(self, path: str, body: dict[str, Any] | None = None) -> httpx2.Response:
        response: httpx2.Response = self.oauth.post(f"{self.api}{path}", json=body or {})
        return response

    def get(self, path: str) -> httpx2.Response:
        response: httpx2.Response = self.oauth.get(f"{self.api}{path}")
        return response

    def webhooks(self, charge_id: str) -> list[dict[str, Any]]:
        return self.events(lambda body: body["data"].get("charge_id") == charge_id)

    def events(self, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        return [body for body in (json.loads(b) for _, b in self.receiver.accepted) if keep(body)]

    def status(self, outlet_id: str, *, within: float = 10) -> dict[str, Any]:
        """Ask for a status notification and wait for its webhook; its data."""
        asked = self.post(f"/v1/outlets/{outlet_id}/status-requests")
        assert asked.status_code == 202, asked.text
        request_id = asked.json()["request_id"]
        body = wait_for(
            lambda: self.event("outlet.status", request_id=request_id),
            timeout=within,
            what=f"the outlet.status webhook for {request_id}",
        )
        return dict(body["data"])

    def event(self, kind: str, **data: Any) -> dict[str, Any] | None:
        """The first webhook of ``kind`` whose data has these values, if one arrived."""
        for body in self.events(lambda b: b["type"] == kind):
            if all(body["data"].get(k) == v for k, v in data.items()):
                return body
        return None


def _marked(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    """The settings a test gives with ``@pytest.mark.<name>(**settings)``."""
    marker = request.node.get_closest_marker(name)
    return dict(marker.kwargs) if marker else {}


def _start_stack(
    inst: Installation, request: pytest.FixtureRequest
) -> tuple[str, str, Proc, dict[str, str]]:
    """Auth, gateway, webhooks, ingest (each with its own database login and its own ops
    listener) and one edge agent; (issuer, API URL, the edge, the ops listeners' URLs)
    once both servers listen."""
    auth_port, api_port = free_port(), free_port()
    ops = {name: f"127.0.0.1:{free_port()}" for name in ("auth", "gateway", "webhooks", "ingest")}
    issuer = f"http://127.0.0.1:{auth_port}"
    common = {
        "issuer": issuer,
        "auth_bind": f"127.0.0.1:{auth_port}",
        "api_bind": f"127.0.0.1:{api_port}",
        "start_wait_s": 3,
        "start_timeout_s": 4,
        "status_timeout_s": 3,
        **_marked(request, "gateway"),
    }
    # Each service with its own database login (least privilege): every test here also
    # proves that the grants of migration 0019 are enough for what it does.
    tag = uuid.uuid4().hex[:8]
    login = {
        service: roles.create_login(inst.database, f"t{tag}_{service}", service)
        for service in ("auth", "gateway", "webhooks", "ingest")
    }
    auth = Proc(
        "auth",
        ["auth"],
        inst.env(**common, database_url=login["auth"], ops_bind=ops["auth"]),
        inst.tmp,
    )
    auth.start()
    gateway = Proc(
        "gateway",
        ["gateway"],
        inst.env(
            **common,
            database_url=login["gateway"],
            gateway_deliver_webhooks="false",
            ops_bind=ops["gateway"],
        ),
        inst.tmp,
    ).start()
    Proc(
        "webhooks",
        ["webhooks"],
        inst.env(**common, database_url=login["webhooks"], ops_bind=ops["webhooks"]),
        inst.tmp,
    ).start()
    inst.ingest(
        **_marked(request, "ingest"), database_url=login["ingest"], ops_bind=ops["ingest"]
    ).start()
    edge_settings: dict[str, Any] = {
        "sample_interval_s": 1,
        "sim_autoplay": "false",
        "sim_cars": "3:40000:16,5:40000:16",
        **_marked(request, "edge"),
    }
    edge = inst.edge(inst.controllers[0], minutes=None, **edge_settings).start()
    wait_port(auth_port, proc=auth)
    wait_port(api_port, proc=gateway)
    return issuer, f"http://127.0.0.1:{api_port}", edge, {k: f"http://{v}" for k, v in ops.items()}


def _registered(database: str, name: str) -> tuple[Receiver, NewClient]:
    """A partner with every scope, registered with its webhook receiver (started)."""
    receiver = Receiver()
    receiver.start()
    scopes = ["charges:write", "charges:read", "outlets:read", "usage:read", "sites:read"]
    return receiver, add_client(database, name, scopes, receiver.url, allow_private=True)


@pytest.fixture
def partner(installation: Installation, request: pytest.FixtureRequest) -> Iterator[Partner]:
    inst = installation
    inst.time_scale = SCALE
    receiver, client = _registered(inst.database, "WeCharge")
    reader = add_client(inst.database, "Reports", ["charges:read"])
    issuer, api, edge, ops = _start_stack(inst, request)
    oauth = OAuth2Client(
        client.client_id, client.client_secret, token_endpoint=f"{issuer}/oauth2/token"
    )
    oauth.fetch_token(grant_type="client_credentials")
    with OAuth2Client(reader.client_id, reader.client_secret) as other:
        reader_token = other.fetch_token(f"{issuer}/oauth2/token", grant_type="client_credentials")[
            "access_token"
        ]
    wait_for(  # the controller announced itself
        lambda: online(installation),
        timeout=30,
        what="the controller online",
    )
    yield Partner(api, oauth, client, receiver, reader_token, edge, f"{issuer}/oauth2/token", ops)
    oauth.close()
    receiver.stop()


@contextlib.contextmanager
def another_partner(partner: Partner, installation: Installation) -> Iterator[Partner]:
    """A second partner with every scope and its own webhook receiver, on the same API."""
    receiver, rival = _registered(installation.database, "Rival")
    oauth = OAuth2Client(rival.client_id, rival.client_secret, token_endpoint=partner.token_url)
    oauth.fetch_token(grant_type="client_credentials")
    try:
        yield Partner(partner.api, oauth, rival, receiver, "", partner.edge, partner.token_url)
    finally:
        oauth.close()
        receiver.stop()


def start_unanswered(partner: Partner, installation: Installation, charge_id: str) -> str:
    """Start a charge on a controller that looks online but runs no agent: 202, pending.
    Returns that controller's id."""
    silent = installation.controllers[1]
    looks_online(installation, silent)
    pending = partner.post("/v1/charges", {"outlet_id": f"{silent}-1", "charge_id": charge_id})
    assert pending.status_code == 202 and pending.json()["state"] == "requested"
    return silent


def commands(installation: Installation, controller_id: str) -> list[tuple[Any, ...]]:
    """The audit trail of a controller's commands: (generation, turn_on, issued_by)."""
    return query(
        installation.database,
        "SELECT generation, turn_on, issued_by FROM commands WHERE controller_id = %s"
        " ORDER BY generation",
        controller_id,
    )


def online(inst: Installation) -> bool:
    rows = query(
        inst.database,
        "SELECT online FROM controller_status WHERE controller_id = %s",
        inst.controllers[0],
    )
    return bool(rows and rows[0][0])


def looks_online(inst: Installation, cid: str) -> None:
    """Mark a controller online although no agent runs for it (it went silent)."""
    with psycopg.connect(inst.database) as conn:
        conn.execute(
            "INSERT INTO controller_status (controller_id, online) VALUES (%s, true)"
            " ON CONFLICT (controller_id) DO UPDATE SET online = true",
            (cid,),
        )


def publish_presence(inst: Installation, cid: str, *, online: bool) -> None:
    """Publish a controller's presence as its agent (or its will) would."""

    async def send() -> None:
        url = MqttUrl(inst.mqtt_url)
        async with mqtt.client(url, identifier=f"test-{cid}") as client:
            message = Presence(controller_id=cid, online=online, since=time.time())
            topic = Topics(inst.topic_root).presence(cid)
            await client.publish(topic, encode(message), qos=1, retain=True)

    asyncio.run(send())


def offline_and_refusing(
    partner: Partner, cid: str, *, reason: str, within: float, charge_id: str
) -> dict[str, Any]:
    """Wait for ``controller.offline`` with ``reason``; then a start there gets 503.
    Returns the webhook's data."""
    offline: dict[str, Any] = wait_for(
        lambda: partner.event("controller.offline", controller_id=cid),
        timeout=within,
        what=f"controller.offline ({reason}) within {within:g} s",
    )["data"]
    assert offline["reason"] == reason
    refused = partner.post("/v1/charges", {"outlet_id": f"{cid}-1", "charge_id": charge_id})
    assert problem(refused) == (503, "controller-offline")
    return offline


def problem(response: httpx2.Response) -> tuple[int, str]:
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.status_code, response.json()["type"].rsplit("/", 1)[1]


def chargeline(installation: Installation, *args: str) -> subprocess.CompletedProcess[str]:
    """The operator's command line, with the installation's settings."""
    return subprocess.run(
        [sys.executable, "-m", "chargeline", *args],
        env={**os.environ, **installation.env()},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _kid(token: str) -> str:
    header = json.loads(base64.urlsafe_b64decode(token.split(".", maxsplit=1)[0] + "=="))
    return str(header["kid"])

"""The cloud's HTTP apps in this test's own event loop, over a real database: the
authorization server and the partner API, reached through httpx2's ASGI transport. No
process, no port, no broker (the gateway's MQTT link retries in the background)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import httpx2
from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

from cloud_gateway import api, auth_server
from cloud_gateway.clients import NewClient
from cloud_gateway.problems import MEDIA_TYPE
from cloud_gateway.settings import GatewaySettings

#: Never dialled (the transport reaches the app); authlib lets OAuth2 run over plain HTTP
#: only on loopback.
ISSUER = "http://127.0.0.1:1"
API = "http://api.test"


class _WithState:
    """An app whose requests see the lifespan's state, as a server would give them."""

    def __init__(self, app: Starlette, state: Mapping[str, Any]) -> None:
        self.app, self.state = app, state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            scope = {**scope, "state": dict(self.state)}
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def running(app: Starlette, base_url: str) -> AsyncIterator[httpx2.AsyncClient]:
    """``app`` with its lifespan running, and a client that reaches it."""
    async with app.router.lifespan_context(app) as state:
        transport = httpx2.ASGITransport(app=_WithState(app, state or {}))
        async with httpx2.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


@contextlib.asynccontextmanager
async def cloud(
    database: str, data_dir: Path
) -> AsyncIterator[tuple[httpx2.AsyncClient, httpx2.AsyncClient]]:
    """(authorization server, partner API) clients; the API checks tokens against the
    in-process authorization server's keys."""
    settings = GatewaySettings(
        issuer=ISSUER,
        data_dir=data_dir,
        mqtt_url="mqtt://127.0.0.1:9",  # nothing there: starts answer broker-unavailable
        gateway_deliver_webhooks=False,
    )
    async with running(auth_server.create_app(settings, database), ISSUER) as auth:
        gateway = api.create_app(settings, database, http=auth)
        async with running(gateway, API) as partner_api:
            yield auth, partner_api


@contextlib.asynccontextmanager
async def as_partner(
    database: str, data_dir: Path, partner: NewClient
) -> AsyncIterator[tuple[httpx2.AsyncClient, dict[str, str]]]:
    """The partner API, and ``partner``'s Authorization header with a token from the
    in-process authorization server."""
    async with cloud(database, data_dir) as (auth, partner_api):
        answer = await auth.post(
            "/oauth2/token",
            data={"grant_type": "client_credentials"},
            auth=(partner.client_id, partner.client_secret),
        )
        assert answer.status_code == 200, answer.text
        yield partner_api, {"authorization": f"Bearer {answer.json()['access_token']}"}


def problem(answer: httpx2.Response, status: int, kind: str) -> dict[str, object]:
    """The RFC 9457 body of an answer that must be the problem ``kind`` with ``status``."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == MEDIA_TYPE
    body: dict[str, object] = answer.json()
    assert body["type"] == f"https://chargeline.example/problems/{kind}"
    assert body["status"] == status
    return body

"""The partner API (``chargeline gateway``): charges started and stopped from the partner's
server, answered after the breaker has moved or with "accepted, pending".

Every call carries an access token from the authorization server; it is checked through
the published keys alone (``cloud_gateway.tokens``). Errors are RFC 9457 problem bodies
(``application/problem+json``, ``cloud_gateway.problems``) whose ``type`` names the problem
and whose ``detail`` says what to change. The OpenAPI document is at ``/openapi.json``.

This module only wires the app: the routes to their handlers (``resources/``), the problem
handlers, and a lifespan that opens the shared ``Gateway`` (``context``) and runs its
background loops (``background``) in one task group, stopped and awaited before the
database pools close.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from cloud_gateway import background, problems
from cloud_gateway.console.pages import routes as console_routes
from cloud_gateway.context import Gateway, State
from cloud_gateway.openapi import document as openapi_document
from cloud_gateway.probe import gateway_probe
from cloud_gateway.request_ids import RequestIds
from cloud_gateway.resources import caps, charges, outlets, sites, usage
from cloud_gateway.settings import GatewaySettings
from kernel import ops, systemd


def create_app(
    settings: GatewaySettings, database_url: str, *, http: httpx2.AsyncClient | None = None
) -> Starlette:
    """The partner API. ``http`` fetches the token keys (tests pass one that reaches an
    in-process authorization server)."""
    document = openapi_document(settings)

    async def spec(request: Request) -> Response:
        return JSONResponse(document)

    started: dict[str, Gateway] = {}
    health = gateway_probe(lambda: started.get("gateway"))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[State]:
        async with (
            Gateway.opened(settings, database_url, http) as gateway,
            asyncio.TaskGroup() as tasks,
            ops.served(settings.ops_bind, health),
        ):
            started["gateway"] = gateway
            loops = background.start(tasks, gateway)
            # READY=1 once uvicorn listens, which it does after this startup returns.
            loops.append(
                tasks.create_task(systemd.announce(lambda: systemd.listening(settings.api_bind)))
            )
            try:
                yield {"gateway": gateway}
            finally:
                for loop in loops:
                    loop.cancel()

    return Starlette(
        routes=[
            Route("/v1/charges", charges.start, methods=["POST"]),
            Route("/v1/charges", charges.history, methods=["GET"]),
            Route("/v1/charges/{charge_id}", charges.read, methods=["GET"]),
            Route("/v1/charges/{charge_id}/stop", charges.stop, methods=["POST"]),
            Route("/v1/outlets/{outlet_id}/status", outlets.status, methods=["GET"]),
            Route(
                "/v1/outlets/{outlet_id}/status-requests", outlets.status_request, methods=["POST"]
            ),
            Route("/v1/outlets/{outlet_id}/usage", outlets.usage, methods=["GET"]),
            Route("/v1/sites", sites.search, methods=["GET"]),
            Route("/v1/sites/{site_id}", sites.detail, methods=["GET"]),
            Route("/v1/sites/{site_id}/caps", caps.read, methods=["GET"]),
            Route("/v1/sites/{site_id}/caps", caps.set_window, methods=["POST"]),
            Route("/v1/sites/{site_id}/caps/{window_id}", caps.remove_window, methods=["DELETE"]),
            Route("/v1/usage", usage.month, methods=["GET"]),
            Route("/openapi.json", spec, methods=["GET"]),
            *ops.health_routes(health),
            Mount("/console", routes=console_routes()),
        ],
        exception_handlers=problems.HANDLERS,
        middleware=[Middleware(RequestIds)],
        lifespan=lifespan,
    )

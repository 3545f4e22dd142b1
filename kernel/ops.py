"""What an operator's monitoring asks every long-running process: ``/healthz`` (alive),
``/readyz`` (its database and MQTT link up) and ``/metrics`` (Prometheus text format).

Each process serves them on its own small HTTP listener when ``ops_bind`` is set
(``CHARGELINE_OPS_BIND=127.0.0.1:9464``; one port per process), in its own event loop,
so an answer says that loop is turning. The gateway and the authorization server also
answer ``/healthz`` and ``/readyz`` on their public port, for a load balancer.

A process describes itself with a ``Probe``: named readiness checks (each an async
callable answering True when that dependency is usable) and the Prometheus collectors of
its metrics. Metrics are read from the process's own counters when scraped
(``prometheus_client`` custom collectors), so counting costs the hot paths nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from schemas.errors import ChargelineError

log = logging.getLogger(__name__)

#: A readiness check slower than this counts as failed: a probe must answer quickly.
CHECK_TIMEOUT_S: Final = 2.0

Check = Callable[[], Awaitable[bool]]


@dataclass
class Probe:
    """One process's readiness checks and metrics."""

    process: str
    checks: dict[str, Check] = field(default_factory=dict)
    registry: CollectorRegistry = field(
        default_factory=lambda: CollectorRegistry(auto_describe=True)
    )

    def collect(self, collector: Collector) -> None:
        self.registry.register(collector)

    async def readiness(self) -> dict[str, bool]:
        """Each check's answer, run together, each within ``CHECK_TIMEOUT_S``."""
        names = list(self.checks)
        answers = await asyncio.gather(*(_within(self.checks[n]) for n in names))
        return dict(zip(names, answers, strict=True))


async def _within(check: Check) -> bool:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_S):
            return bool(await check())
    except Exception as exc:  # a failing check is an answer: not ready
        log.debug("readiness check failed: %s", exc)
        return False


def health_routes(probe: Probe) -> list[Route]:
    """``/healthz`` and ``/readyz``: 200 when alive / ready, 503 naming what is not."""

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "alive", "process": probe.process})

    async def readyz(request: Request) -> Response:
        checks = await probe.readiness()
        ready = all(checks.values())
        body = {
            "status": "ready" if ready else "not ready",
            "process": probe.process,
            "checks": checks,
        }
        return JSONResponse(body, status_code=200 if ready else 503)

    return [Route("/healthz", healthz), Route("/readyz", readyz)]


def app(probe: Probe) -> Starlette:
    """The ops listener: health, readiness and metrics."""

    return Starlette(routes=[*health_routes(probe), Route("/metrics", _Metrics(probe.registry))])


class _Metrics:
    """prometheus_client's own ASGI exposition (text or OpenMetrics, as the scraper
    asks; gzip when accepted), as a Starlette endpoint."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.app = make_asgi_app(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


@contextlib.asynccontextmanager
async def served(bind: str | None, probe: Probe) -> AsyncIterator[None]:
    """Serve ``app(probe)`` on ``bind`` (host:port) while the block runs; nothing when
    ``bind`` is None. A port already taken is an error at start (``OpsBindError``), not a
    silent gap in the monitoring."""
    if bind is None:
        yield
        return
    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # the process's own handlers stop it (kernel.runner), not this listener's

    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    try:  # bound here, so that a port in use is one clear error, not uvicorn's exit
        listener = socket.create_server((host, int(port)), reuse_port=False)
    except OSError as exc:
        raise OpsBindError(f"ops_bind {bind}: {exc.strerror or exc}") from None
    config = uvicorn.Config(
        app(probe), log_level="warning", access_log=False, log_config=None, lifespan="off"
    )
    server = Server(config)
    task = asyncio.create_task(server.serve(sockets=[listener]), name="ops")
    log.info("health, readiness and metrics on http://%s/", bind)
    try:
        yield
    finally:
        server.should_exit = True
        await task
        listener.close()


def by_label(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    documentation: str,
    label: str,
    values: Mapping[str, float],
) -> Metric:
    """A counter or gauge family with one sample per value of ``label``: every value in
    ``values`` is exported, those at 0 too, so a series exists before its first event."""
    family = kind(name, documentation, labels=[label])
    for value, count in values.items():
        family.add_metric([value], count)
    return family


class OpsBindError(ChargelineError):
    """The ops listener's address cannot be used (taken, or not this host's)."""

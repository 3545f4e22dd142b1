"""Serving the authorization server and the partner API: uvicorn, guarded.

uvicorn holds a connection for as long as its client likes until a request has arrived
in full: 3,000 half-sent requests were held by the gateway, and with a distribution's
1,024 file descriptors, 1,100 of them locked everyone out. ``GuardedHttp`` is uvicorn's
httptools protocol with three limits:

- connections are capped in total and per source address (``kernel.limits``); one
  over the cap gets ``503`` and is closed at once;
- each request must arrive in full (headers and body) within ``http_request_timeout_s``
  of the connection opening or of the previous response, else ``408`` and the connection
  closes: a client trickling a byte at a time no longer holds a socket for ever;
- the process's open-file limit is raised to its hard limit, and the total cap kept
  below it.

A reverse proxy in front (docs/operations.md, deploy/nginx/) adds TLS and buffering.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cloud_gateway.settings import GatewaySettings
from kernel.limits import ConnectionBudget, connection_cap, peer_address, raise_file_limit
from kernel.logsafe import Summarised

log = logging.getLogger(__name__)

_SERVICE_UNAVAILABLE = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 5\r\n"
    b"Content-Length: 0\r\n\r\n"
)
_REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"


class GuardedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol with connection caps and a request deadline. The
    limits are class attributes: ``guarded`` makes a subclass per server."""

    budget: ClassVar[ConnectionBudget]
    request_timeout_s: ClassVar[float]
    noisy: ClassVar[Summarised]

    _address: str | None = None
    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        address = peer_address(transport.get_extra_info("peername"))
        refusal = self.budget.admit(address)
        if refusal is not None:
            self.noisy.warning(
                "HTTP connections refused", "refused a connection from %s: %s", address, refusal
            )
            transport.write(_SERVICE_UNAVAILABLE)
            transport.close()
            return
        self._address = address
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._address is None:
            return  # refused: uvicorn never knew of it
        self.budget.release(self._address)
        self._address = None
        self._disarm()
        super().connection_lost(exc)

    def on_message_complete(self) -> None:
        self._disarm()  # the request is in: the application's time is its own
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection has its own deadline

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.request_timeout_s, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        self.noisy.warning(
            "slow requests cut off",
            "no complete request from %s within %g s: closing",
            self._address,
            self.request_timeout_s,
        )
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            if cycle is not None:
                cycle.disconnected = True  # what the application sends now is dropped
            self.transport.write(_REQUEST_TIMEOUT)
        self.transport.close()


def guarded(settings: GatewaySettings) -> type[GuardedHttp]:
    """A ``GuardedHttp`` with this server's limits."""
    cap = connection_cap(settings.http_max_connections, raise_file_limit())
    limits: dict[str, Any] = {
        "budget": ConnectionBudget(cap, settings.http_max_connections_per_address),
        "request_timeout_s": settings.http_request_timeout_s,
        "noisy": Summarised(log),
    }
    return type("GuardedHttpServer", (GuardedHttp,), limits)


def serve(app: Any, bind: str, settings: GatewaySettings) -> None:
    """Run ``app`` on ``bind`` (host:port) until SIGINT/SIGTERM."""
    host, _, port = bind.rpartition(":")
    uvicorn.run(
        app,
        host=host,
        port=int(port),
        log_level="warning",
        access_log=False,
        log_config=None,  # our handlers (kernel.runner), which hold back floods
        http=guarded(settings),
        backlog=1024,
        timeout_keep_alive=5,
        proxy_headers=bool(settings.http_trusted_proxies),
        forwarded_allow_ips=settings.http_trusted_proxies or None,
        h11_max_incomplete_event_size=16 * 1024,
    )

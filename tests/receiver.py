"""A partner's webhook endpoint, in a thread: answers with a chosen status and records what it accepted."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.procs import free_port, wait_port


@dataclass
class Receiver:
    """A partner's webhook endpoint: answers ``status``; records what it accepted."""

    port: int = field(default_factory=free_port)
    status: int = 200
    accepted: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    #: ``time.monotonic()`` when each accepted webhook arrived (benchmarks time them).
    arrived: list[float] = field(default_factory=list)
    refused: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> None:
        async def hook(request: Request) -> Response:
            body = await request.body()
            if self.status >= 300:
                self.refused += 1
            else:
                self.accepted.append((dict(request.headers), body))
                self.arrived.append(time.monotonic())
            return Response(status_code=self.status)

        app = Starlette(routes=[Route("/hooks", hook, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_port(self.port)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = None

    def bodies(self) -> list[dict[str, object]]:
        import json

        return [json.loads(body) for _, body in self.accepted]

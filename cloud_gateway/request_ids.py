"""A request id for every HTTP call: on each log line written while it is served
(``kernel.logformat``) and in the answer's ``X-Request-Id`` header.

A caller may send its own ``X-Request-Id`` (1 to 64 letters, digits, ``.``, ``_`` or
``-``) to find its call in chargeline's logs; any other value is replaced by a fresh
random id, so a log line never carries what a caller chose beyond that alphabet. Pure
ASGI, so the API pays a header lookup and a context switch of one variable per call.
"""

from __future__ import annotations

import re
import secrets
from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kernel import logformat

HEADER: Final = b"x-request-id"
_ACCEPTED = re.compile(rb"[A-Za-z0-9._-]{1,64}")


def request_id(headers: list[tuple[bytes, bytes]]) -> str:
    """The caller's id if it is one we accept, else a new one (16 hex digits). Pure."""
    for name, value in headers:
        if name == HEADER and _ACCEPTED.fullmatch(value):
            return value.decode("ascii")
    return secrets.token_hex(8)


class RequestIds:
    """ASGI middleware: binds ``request_id`` for the call and answers it in a header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ident = request_id(scope["headers"])
        header = (HEADER, ident.encode("ascii"))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        with logformat.bound(request_id=ident):
            await self.app(scope, receive, send_with_id)

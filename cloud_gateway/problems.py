"""RFC 9457 problem documents: every error the partner API gives, from one catalogue.

A handler raises ``Problem(kind, detail)``; ``kind`` must be in ``CATALOGUE``, which gives
its status and title and which the OpenAPI document lists, so partners can see every ``type`` they
may meet. Unknown paths, wrong methods, oversized bodies and unexpected failures answer
with problem documents too (``HANDLERS``, which ``cloud_gateway.api`` installs).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cloud_gateway.tokens import TokenError
from schemas.errors import ChargelineError, InputError

log = logging.getLogger(__name__)

BASE = "https://chargeline.example/problems/"
MEDIA_TYPE = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ProblemType:
    status: int
    title: str
    description: str


CATALOGUE: dict[str, ProblemType] = {
    "invalid-token": ProblemType(401, "Unauthorized", "no access token, or not a valid one"),
    "insufficient-scope": ProblemType(403, "Forbidden", "the token lacks the scope the call needs"),
    "unknown-charge": ProblemType(404, "Unknown charge", "no such charge for this client"),
    "unknown-outlet": ProblemType(404, "Unknown outlet", "no outlet with this id"),
    "unknown-site": ProblemType(404, "Unknown site", "no site with this id"),
    "unknown-cap-window": ProblemType(
        404, "Unknown cap window", "no such cap window at this site (or it was removed)"
    ),
    "not-found": ProblemType(404, "Not found", "no such path"),
    "method-not-allowed": ProblemType(405, "Method not allowed", "see the Allow header"),
    "charge-id-conflict": ProblemType(
        409, "Charge id in use", "the charge id exists with a different request"
    ),
    "outlet-busy": ProblemType(409, "Outlet busy", "the outlet has an active charge"),
    "outlet-out-of-service": ProblemType(
        409, "Outlet out of service", "the operator took the outlet out of service"
    ),
    "body-too-large": ProblemType(413, "Body too large", "the request body exceeds the limit"),
    "invalid-request": ProblemType(
        422, "Invalid request", "a field, parameter or path segment does not match its schema"
    ),
    "end-at-past": ProblemType(422, "End time in the past", "end_at has already passed"),
    "end-at-too-far": ProblemType(422, "End time too far", "end_at is beyond the longest charge"),
    "rate-limited": ProblemType(429, "Too many requests", "wait for Retry-After seconds"),
    "internal-error": ProblemType(500, "Internal error", "a fault of ours; retry later"),
    "controller-offline": ProblemType(
        503, "Controller offline", "the outlet's controller is offline; retry later"
    ),
    "broker-unavailable": ProblemType(
        503, "Broker unavailable", "the command could not be sent; retry"
    ),
    "temporarily-unavailable": ProblemType(
        503, "Temporarily unavailable", "the token could not be checked; retry"
    ),
}


class Problem(ChargelineError):
    """An RFC 9457 problem: ``kind`` becomes the ``type`` URI, ``detail`` says what to fix.

    ``headers`` go out with it (``Retry-After``, ``WWW-Authenticate``, ``Allow``)."""

    def __init__(
        self, kind: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        known = CATALOGUE.get(kind)
        if known is None:
            raise ValueError(f"problem {kind!r} is not in the catalogue")
        super().__init__(detail)
        self.status = known.status
        self.kind = kind
        self.title = known.title
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {
            "type": BASE + self.kind,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            **self.extra,
        }

    def response(self) -> Response:
        return JSONResponse(
            self.body(), status_code=self.status, headers=self.headers, media_type=MEDIA_TYPE
        )


def problem_for(exc: ChargelineError) -> Problem:
    """The one mapping from the error tree to the problem a partner gets."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, TokenError):
        # RFC 6750 §3: the challenge is a fixed text (the error code alone), nothing from
        # the request echoed.
        headers = {}
        if exc.status in (401, 403):
            headers["WWW-Authenticate"] = f'Bearer error="{exc.error}"'
        return Problem(exc.error.replace("_", "-"), exc.description, headers=headers)
    if isinstance(exc, InputError):
        return Problem("invalid-request", str(exc))
    log.error("unmapped %s: %s", type(exc).__name__, exc, exc_info=exc)
    return Problem("internal-error", "the request failed on our side; retry")


# --- the app's exception handlers: every error answers with a problem document ----------
async def _problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ChargelineError)
    return problem_for(exc).response()


async def _not_found(request: Request, exc: Exception) -> Response:
    return Problem("not-found", f"no {request.url.path!r} here; see /openapi.json").response()


async def _not_allowed(request: Request, exc: Exception) -> Response:
    allow = (exc.headers or {}).get("Allow", "") if isinstance(exc, HTTPException) else ""
    detail = f"{request.method} is not allowed here" + (f"; use {allow}" if allow else "")
    headers = {"Allow": allow} if allow else None
    return Problem("method-not-allowed", detail, headers=headers).response()


async def _internal(request: Request, exc: Exception) -> Response:
    log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return Problem("internal-error", "the request failed on our side; retry").response()


HANDLERS: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
    ChargelineError: _problem,
    404: _not_found,
    405: _not_allowed,
    Exception: _internal,
}

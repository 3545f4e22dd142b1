"""What a partner call sends, read and checked before anything else: path ids against their
alphabets, a body within its size limit, and pydantic's complaints as one 422."""

from __future__ import annotations

import datetime as dt
import re
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect, Request

from cloud_gateway.models import SITE_ID_PATTERN
from cloud_gateway.problems import Problem
from schemas.messages import CHARGE_ID_PATTERN, OUTLET_ID_PATTERN

Q = TypeVar("Q", bound=BaseModel)

_CHARGE_ID = re.compile(CHARGE_ID_PATTERN)
_OUTLET_ID = re.compile(OUTLET_ID_PATTERN)
_SITE_ID = re.compile(SITE_ID_PATTERN)


def charge_id(request: Request) -> str:
    """The charge id in the path; one outside its alphabet names no charge (404)."""
    value: str = request.path_params["charge_id"]
    if not _CHARGE_ID.match(value):
        raise Problem("unknown-charge", "no such charge for this client")
    return value


def outlet_id(request: Request) -> str:
    """The outlet id in the path; one outside its alphabet names no outlet (404)."""
    value: str = request.path_params["outlet_id"]
    if not _OUTLET_ID.match(value):
        raise Problem("unknown-outlet", "no outlet with this id")
    return value


def site_id(request: Request) -> str:
    """The site id in the path; one outside its alphabet names no site (404)."""
    value: str = request.path_params["site_id"]
    if not _SITE_ID.match(value):
        raise Problem("unknown-site", "no site with this id")
    return value


def query(request: Request, model: type[Q]) -> Q:
    """The query parameters as ``model`` reads them: each at most once, none unknown;
    a 422 names every one that is wrong."""
    params = request.query_params
    repeated = sorted({key for key in params if len(params.getlist(key)) > 1})
    if repeated:
        raise Problem("invalid-request", f"{', '.join(repeated)}: give each parameter once")
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        raise invalid(exc) from None


def first_day(month: str) -> dt.date:
    """The first day of a ``YYYY-MM`` month (already checked against its pattern)."""
    return dt.datetime.strptime(month, "%Y-%m").date()


async def body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes:
    from its Content-Length before anything is read, else while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem("body-too-large", f"request bodies are limited to {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Problem("body-too-large", f"request bodies are limited to {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise Problem("invalid-request", "the body was cut short") from None
    return b"".join(chunks)


def invalid(exc: ValidationError) -> Problem:
    """A 422 naming each field that is wrong and why (no input values echoed)."""
    detail = "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )
    return Problem("invalid-request", detail)

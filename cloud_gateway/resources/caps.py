"""``/v1/sites/{site_id}/caps``: the operator API for a site's cap (load management). Read
with ``sites:read``; set and remove windows with ``sites:write``, each change recorded with
the client that made it (``charging.site_caps``)."""

from __future__ import annotations

import datetime as dt

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from charging import site_caps
from cloud_gateway import context, inputs
from cloud_gateway.models import CapWindow, SetCap, SiteCap, SiteLoadNow
from cloud_gateway.problems import Problem
from kernel.times import utc


async def _answer(conn: site_caps.Conn, site_id: str, now: float) -> SiteCap:
    try:
        cap = await site_caps.cap_of(conn, site_id, now=now)
    except site_caps.UnknownSite:
        raise Problem("unknown-site", f"no site {site_id!r}") from None
    windows = await site_caps.windows(conn, site_id, now=now)
    recent = await site_caps.recent_load(conn, site_id, since=utc(now - 600))
    load = None
    if recent:
        last = recent[-1]
        load = SiteLoadNow(
            at=utc(last["at"]),
            site_a=round(last["building_a"] + last["outlets_a"], 1),
            building_a=round(last["building_a"], 1),
            outlets_a=round(last["outlets_a"], 1),
            allocated_a=round(last["allocated_a"], 1),
            charging=last["charging"],
            waiting=last["waiting"],
        )
    return SiteCap(
        site_id=site_id,
        cap_a=cap.amps,
        source=cap.source,
        window_id=cap.window,
        windows=[CapWindow(**site_caps.window_json(w)) for w in windows],
        load=load,
    )


async def read(request: Request) -> Response:
    gateway = context.of(request)
    await gateway.authorize(request, "sites:read")
    site_id = inputs.site_id(request)
    async with gateway.pool.connection() as conn:
        answer = await _answer(conn, site_id, gateway.settings.now())
    return JSONResponse(answer.model_dump(mode="json"))


async def set_window(request: Request) -> Response:
    gateway = context.of(request)
    caller = await gateway.authorize(request, "sites:write")
    site_id = inputs.site_id(request)
    raw = await inputs.body(request, gateway.settings.max_body_bytes)
    try:
        body = SetCap.model_validate_json(raw)
    except ValidationError as exc:
        raise inputs.invalid(exc) from None
    now = gateway.settings.now()
    async with gateway.pool.connection() as conn:
        try:
            window = await site_caps.add_window(
                conn,
                site_id,
                cap_a=body.cap_a,
                starts_at=_epoch(body.starts_at) or now,
                ends_at=_epoch(body.ends_at),
                reason=body.reason,
                note=body.note,
                set_by=f"client:{caller.client_id}",
                now=now,
            )
        except site_caps.UnknownSite:
            raise Problem("unknown-site", f"no site {site_id!r}") from None
    return JSONResponse(
        CapWindow(**site_caps.window_json(window)).model_dump(mode="json"),
        status_code=201,
    )


async def remove_window(request: Request) -> Response:
    gateway = context.of(request)
    caller = await gateway.authorize(request, "sites:write")
    site_id = inputs.site_id(request)
    raw = request.path_params["window_id"]
    if not raw.isdigit() or len(raw) > 18:
        raise Problem("unknown-cap-window", f"no cap window {raw[:40]!r} at site {site_id!r}")
    async with gateway.pool.connection() as conn:
        try:
            await site_caps.remove_window(
                conn, site_id, int(raw), removed_by=f"client:{caller.client_id}"
            )
        except site_caps.UnknownSite:
            raise Problem("unknown-site", f"no site {site_id!r}") from None
        except site_caps.UnknownWindow as exc:
            raise Problem("unknown-cap-window", str(exc)) from None
        answer = await _answer(conn, site_id, gateway.settings.now())
    return JSONResponse(answer.model_dump(mode="json"))


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()

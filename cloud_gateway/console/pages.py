"""The console's routes (see the package docstring): login and logout; Sites, Charges
(with each charge's page), an outlet's page, Alarms, and the partners and controllers;
the actions (stop a charge, request a status, out of service and back, acknowledge an
alarm), each behind a session, its CSRF token and the admin role."""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from charging import lifecycle
from cloud_gateway import context, operator, operators, repository
from cloud_gateway.console import alarms, charge, outlets, sites
from cloud_gateway.console.records import records
from cloud_gateway.operators import Session
from cloud_gateway.ratelimit import RateLimiter, retry_after
from cloud_gateway.repository import Conn
from kernel import logformat
from schemas.codec import encode
from schemas.messages import StatusRequest

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
COOKIE = "chargeline_console"
#: A session lasts a working day; logging out or disabling the operator ends it sooner.
SESSION_S = 8 * 3600
#: Login attempts per source address: a few a minute, a burst of five.
_LOGINS = RateLimiter(0.1, 5)
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
STATES = [s.value for s in lifecycle.State]

templates = Jinja2Templates(directory=str(HERE / "templates"))

Handler = Callable[[Request, Session], Awaitable[Response]]


def routes() -> list[Route | Mount]:
    return [
        Route("/", home),
        Route("/login", login_page, methods=["GET"]),
        Route("/login", login, methods=["POST"]),
        Route("/logout", _guarded(logout), methods=["POST"]),
        Route("/charges", _page(charges_page)),
        Route("/charges/rows", _page(charge_rows)),
        Route("/charges/{charge_id}", _page(charge_page)),
        Route("/charges/{charge_id}/stop", _guarded(stop, act=True), methods=["POST"]),
        Route("/sites", _page(sites_page)),
        Route("/sites/{site_id}/load.json", _page(site_load)),
        Route("/outlets/{outlet_id}", _page(outlet_page)),
        Route(
            "/outlets/{outlet_id}/status-request",
            _guarded(status_request, act=True),
            methods=["POST"],
        ),
        Route("/outlets/{outlet_id}/service", _guarded(service, act=True), methods=["POST"]),
        Route("/clients", _page(clients_page)),
        Route("/alarms", _page(alarms_page)),
        Route("/alarms/rows", _page(alarm_rows)),
        Route("/alarms/acknowledge", _guarded(acknowledge, act=True), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]


def _render(request: Request, name: str, status: int = 200, **values: Any) -> Response:
    response = templates.TemplateResponse(request, name, values, status_code=status)
    response.headers.update(_HEADERS)
    return response


async def _session(request: Request) -> Session | None:
    gateway = context.of(request)
    async with gateway.pool.connection() as conn:
        found = await operators.session(conn, request.cookies.get(COOKIE))
    if found is not None:
        logformat.bind(client_id=f"operator:{found.operator}")
    return found


def _missing(request: Request, session: Session, what: str) -> Response:
    return _render(request, "refused.html", 404, session=session, why=f"no {what}")


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/console/login?{urlencode({'next': target})}", status_code=303)


def _page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A page for any operator with a session; without one, the login page."""

    async def page(request: Request) -> Response:
        found = await _session(request)
        if found is None:
            return _to_login(request)
        return await handler(request, found)

    return page


def _guarded(handler: Handler, *, act: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """A form post: a session, its CSRF token, and (``act``) the admin role."""

    async def post(request: Request) -> Response:
        found = await _session(request)
        if found is None:
            return _to_login(request)
        form = await request.form()
        sent = str(form.get("csrf_token", "")).encode()
        if not secrets.compare_digest(sent, found.csrf_token.encode()):
            return _render(
                request,
                "refused.html",
                403,
                why="the form's token does not match your session: reload the page",
            )
        if act and not found.may_act:
            return _render(
                request,
                "refused.html",
                403,
                why=f"{found.operator} may look but not act (role read-only)",
            )
        request.state.form = form
        return await handler(request, found)

    return post


async def home(request: Request) -> Response:
    return RedirectResponse("/console/charges", status_code=303)


def _next(value: object) -> str:
    """Where to go after login: only a page of the console (never another site)."""
    text = str(value or "")
    return text if text.startswith("/console/") and "//" not in text else "/console/charges"


async def login_page(request: Request) -> Response:
    return _render(request, "login.html", next=_next(request.query_params.get("next")), error=None)


async def login(request: Request) -> Response:
    form = await request.form()
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    target = _next(form.get("next"))
    source = request.client.host if request.client else "?"
    wait = _LOGINS.take(source)
    if wait:
        response = _render(
            request, "login.html", 429, next=target, error="too many attempts: wait a minute"
        )
        response.headers["Retry-After"] = retry_after(wait)
        return response
    gateway = context.of(request)
    async with gateway.pool.connection() as conn:
        if not await operators.verify(conn, name, password):
            log.warning("console login refused for %r from %s", name[:64], source)
            return _render(request, "login.html", 401, next=target, error="wrong name or password")
        token, _ = await operators.open_session(conn, name, SESSION_S)
    log.info("console login: %s from %s", name, source)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=SESSION_S,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request, session: Session) -> Response:
    gateway = context.of(request)
    async with gateway.pool.connection() as conn:
        await operators.close_session(conn, request.cookies.get(COOKIE, ""))
    response = RedirectResponse("/console/login", status_code=303)
    response.delete_cookie(COOKIE, path="/console")
    return response


# --- charges ------------------------------------------------------------------------------
_CHARGES = """
SELECT c.charge_id, c.partner_charge_id, c.client_id, k.name AS client, c.outlet_id, c.state,
       c.requested_at, c.stopped_at, c.energy_wh, c.fee, c.currency, c.stop_reason, c.failure
FROM charges c LEFT JOIN oauth_clients k USING (client_id)
WHERE (%(q)s = '' OR c.charge_id = %(q)s OR c.partner_charge_id = %(q)s OR c.outlet_id = %(q)s
       OR c.client_id = %(q)s OR k.name = %(q)s)
  AND (%(state)s = '' OR c.state = %(state)s)
  AND (%(since)s = '' OR c.requested_at >= %(since)s::date)
  AND (%(until)s = '' OR c.requested_at < %(until)s::date + 1)
ORDER BY c.requested_at DESC
LIMIT 100
"""


def _filters(request: Request) -> dict[str, str]:
    """The search: an id (charge, the partner's, outlet, client), a state, and the days
    requested (``since``, ``until``: YYYY-MM-DD, UTC, both included). Anything else is
    left out rather than refused: a search box is not an API."""
    q = request.query_params.get("q", "").strip()[:100]
    state = request.query_params.get("state", "")
    return {
        "q": q,
        "state": state if state in STATES else "",
        "since": _day(request.query_params.get("since", "")),
        "until": _day(request.query_params.get("until", "")),
    }


def _day(value: str) -> str:
    try:
        return dt.date.fromisoformat(value).isoformat() if value else ""
    except ValueError:
        return ""


async def _charges(request: Request) -> list[dict[str, Any]]:
    gateway = context.of(request)
    async with gateway.pool.connection() as conn:
        return await records(conn, _CHARGES, _filters(request))


async def charges_page(request: Request, session: Session) -> Response:
    filters = _filters(request)
    return _render(
        request,
        "charges.html",
        session=session,
        charges=await _charges(request),
        filters=filters,
        query=urlencode(filters),
        states=STATES,
        stoppable=[s.value for s in lifecycle.STOPPABLE],
    )


async def charge_rows(request: Request, session: Session) -> Response:
    return _render(
        request,
        "_charge_rows.html",
        session=session,
        charges=await _charges(request),
        stoppable=[s.value for s in lifecycle.STOPPABLE],
    )


async def charge_page(request: Request, session: Session) -> Response:
    gateway = context.of(request)
    charge_id = request.path_params["charge_id"]
    async with gateway.pool.connection() as conn:
        found = await charge.charge(conn, charge_id)
    if found is None:
        return _missing(request, session, f"charge {charge_id!r}")
    stoppable = [s.value for s in lifecycle.STOPPABLE]
    return _render(request, "charge.html", session=session, c=found, stoppable=stoppable)


async def stop(request: Request, session: Session) -> Response:
    """Stop a charge on the operator's authority (an OFF of the outlet's next generation),
    recorded with who did it; the breaker's answer arrives as for any stop."""
    gateway = context.of(request)
    charge_id = request.path_params["charge_id"]

    async def noted(conn: Conn) -> None:
        await operators.record(conn, session.operator, "stop charge", charge_id)

    async with gateway.pool.connection() as conn:
        row = await (await repository.select_charge(conn, charge_id)).fetchone()
        if row is None:
            return _missing(request, session, f"charge {charge_id!r}")
        want = await operator.record_stop(
            conn,
            row,
            issued_by=f"operator:{session.operator}",
            now=gateway.settings.now(),
            then=noted,
        )
    if want is None:  # stopping or stopped already
        return RedirectResponse(_back(request.state.form), status_code=303)
    await gateway.publish(want)
    log.info(
        "console: %s stopped charge %s", session.operator, charge_id, extra={"charge_id": charge_id}
    )
    return RedirectResponse(_back(request.state.form), status_code=303)


def _back(form: FormData) -> str:
    return _next(form.get("back"))


# --- alarms -------------------------------------------------------------------------------
async def _alarms(request: Request) -> list[dict[str, Any]]:
    gateway = context.of(request)
    async with gateway.pool.connection() as conn:
        return await alarms.current(conn)


async def alarms_page(request: Request, session: Session) -> Response:
    return _render(
        request, "alarms.html", session=session, alarms=await _alarms(request), kinds=alarms.KINDS
    )


async def alarm_rows(request: Request, session: Session) -> Response:
    return _render(
        request,
        "_alarm_rows.html",
        session=session,
        alarms=await _alarms(request),
        kinds=alarms.KINDS,
    )


async def acknowledge(request: Request, session: Session) -> Response:
    key = str(request.state.form.get("key", ""))
    gateway = context.of(request)
    async with gateway.pool.connection() as conn, conn.transaction():
        if await alarms.acknowledge(conn, key, session.operator):
            await operators.record(conn, session.operator, "acknowledge alarm", key)
    return RedirectResponse("/console/alarms", status_code=303)


# --- sites --------------------------------------------------------------------------------
async def sites_page(request: Request, session: Session) -> Response:
    gateway = context.of(request)
    async with gateway.pool.connection() as conn:
        found = await sites.sites(conn)
    return _render(request, "sites.html", session=session, sites=found, statuses=sites.STATUSES)


async def site_load(request: Request, session: Session) -> Response:
    gateway = context.of(request)
    async with gateway.pool.connection() as conn:
        data = await sites.load(conn, request.path_params["site_id"])
    if data is None:
        return JSONResponse({"error": "no such site"}, status_code=404, headers=_HEADERS)
    return JSONResponse(data, headers=_HEADERS)


# --- outlets, partners and controllers -----------------------------------------------------
async def outlet_page(request: Request, session: Session) -> Response:
    gateway = context.of(request)
    outlet_id = request.path_params["outlet_id"]
    async with gateway.pool.connection() as conn:
        found = await outlets.outlet(conn, outlet_id)
    if found is None:
        return _missing(request, session, f"outlet {outlet_id!r}")
    return _render(request, "outlet.html", session=session, o=found)


async def status_request(request: Request, session: Session) -> Response:
    """Ask the edge for a fresh sample: it arrives as an edge event of kind ``status``."""
    gateway = context.of(request)
    outlet_id = request.path_params["outlet_id"]
    client = gateway.client
    if client is None:
        return _render(
            request,
            "refused.html",
            503,
            session=session,
            why="the broker is unreachable: try again",
        )
    async with gateway.pool.connection() as conn:
        found = await outlets.outlet(conn, outlet_id)
        if found is None:
            return _missing(request, session, f"outlet {outlet_id!r}")
        request_id = f"op_{secrets.token_hex(8)}"
        ask = StatusRequest(
            controller_id=found["controller_id"],
            request_id=request_id,
            at=gateway.settings.now(),
            outlet=found["outlet_no"],
        )
        await operators.record(conn, session.operator, "request status", outlet_id, request_id)
    await client.publish(gateway.topics.request(ask.controller_id), encode(ask), qos=1)
    return RedirectResponse(f"/console/outlets/{outlet_id}", status_code=303)


async def service(request: Request, session: Session) -> Response:
    gateway = context.of(request)
    outlet_id = request.path_params["outlet_id"]
    in_service = request.state.form.get("in_service") == "true"
    async with gateway.pool.connection() as conn, conn.transaction():
        if await outlets.set_in_service(conn, outlet_id, in_service):
            action = "put in service" if in_service else "put out of service"
            await operators.record(conn, session.operator, action, outlet_id)
    return RedirectResponse(f"/console/outlets/{outlet_id}", status_code=303)


async def clients_page(request: Request, session: Session) -> Response:
    gateway = context.of(request)
    async with gateway.pool.connection() as conn:
        partners, fleet = await outlets.clients(conn), await outlets.controllers(conn)
    return _render(request, "clients.html", session=session, partners=partners, controllers=fleet)

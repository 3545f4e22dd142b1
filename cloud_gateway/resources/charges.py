"""``/v1/charges``: start, read and stop a charge.

Starting a charge, in one database transaction: check the outlet and its controller,
allocate the outlet's next command generation, record the command and the charge (a
partial unique index refuses a second active charge on the outlet). After the commit the
desired state is published retained; the call waits up to ``start_wait_s`` for the edge's
acknowledgement and applies it to the charge itself (ingest applies the same one from the
durable stream; the row lock and the state machine make that harmless).
"""

from __future__ import annotations

import hashlib
import json

from psycopg import errors
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from charging import charges, lifecycle
from charging import commands as command_records
from cloud_gateway import context, inputs, repository
from cloud_gateway.context import Gateway, NewCharge
from cloud_gateway.models import ChargePage, ChargeSearch, StartCharge
from cloud_gateway.problems import Problem
from cloud_gateway.repository import ChargeRow, Conn
from cloud_gateway.tokens import Caller
from kernel import logformat
from kernel.times import utc
from schemas.messages import DesiredState


async def start(request: Request) -> Response:
    with context.of(request).start_seconds.time():
        return await _start(request)


async def _start(request: Request) -> Response:
    gateway = context.of(request)
    caller = await gateway.authorize(request, "charges:write")
    raw = await inputs.body(request, gateway.settings.max_body_bytes)
    try:
        body = StartCharge.model_validate_json(raw)
    except ValidationError as exc:
        raise inputs.invalid(exc) from None
    now = gateway.settings.now()
    end_at = body.end_at.timestamp() if body.end_at else now + gateway.settings.max_charge_s
    digest = hashlib.sha256(
        json.dumps(
            [caller.client_id, body.outlet_id, body.charge_id, body.end_at and end_at]
        ).encode()
    ).digest()
    bad_end = _end_at_problem(gateway, end_at, now)
    charge_id = charges.internal_id(caller.client_id, body.charge_id)
    logformat.bind(charge_id=charge_id, outlet_id=body.outlet_id)  # the charges table's key
    async with gateway.pool.connection() as conn:
        # The usual case is one round trip and the commit: the command and the charge
        # are written only if the outlet exists, its controller is online and the
        # charge id is new (in SQL, see charging.commands.send_start).
        want = None
        if bad_end is None:
            want = await _record_start(
                conn,
                body,
                client_id=caller.client_id,
                charge_id=charge_id,
                end_at=end_at,
                now=now,
                digest=digest,
            )
        if want is None:
            # Nothing was written: say why, or answer a repeated request.
            existing = await _why_not_started(conn, caller, body, digest, bad_end)
            return JSONResponse(existing.json(), status_code=200)
    new = NewCharge(
        charge=lifecycle.start(charge_id, want.generation),
        partner_charge_id=body.charge_id,
        outlet_id=body.outlet_id,
        end_at=utc(end_at),
    )
    row = await gateway.send(charge_id, want, new=new)
    waiting = (lifecycle.State.REQUESTED.value, lifecycle.State.QUEUED.value)
    status = 202 if row.state in waiting else 201
    return JSONResponse(row.json(), status_code=status)


async def _why_not_started(
    conn: Conn, caller: Caller, body: StartCharge, digest: bytes, bad_end: Problem | None
) -> ChargeRow:
    """The charge a repeated start names (the same request), else the problem."""
    async with conn.pipeline():
        by_id = await repository.select_own_charge(conn, caller.client_id, body.charge_id)
        by_outlet = await repository.outlet_route(conn, body.outlet_id)
    existing = await by_id.fetchone()
    outlet = await by_outlet.fetchone()
    if existing is not None:
        if bytes(existing.request_sha256) != digest:
            raise Problem(
                "charge-id-conflict",
                f"charge {body.charge_id!r} exists with a different request",
            )
        return existing
    if bad_end is not None:
        raise bad_end
    if outlet is not None and not outlet[3]:
        raise Problem("outlet-out-of-service", f"outlet {body.outlet_id!r} is out of service")
    reachable(outlet, body.outlet_id, "no charge can start")
    # Reachable now: the controller came online since the guard looked.
    raise Problem(
        "controller-offline",
        f"the controller of outlet {body.outlet_id!r} just came online; retry",
    )


def reachable(
    row: tuple[str, int, bool | None, bool] | None, outlet_id: str, offline_hint: str
) -> tuple[str, int]:
    """(controller, outlet number) from a ``repository.outlet_route`` row, or the
    problem: an unknown outlet (404) or an offline controller (503)."""
    if row is None:
        raise Problem("unknown-outlet", f"no outlet {outlet_id!r}")
    controller_id, outlet_no, online, _in_service = row
    if not online:
        raise Problem(
            "controller-offline",
            f"the controller of outlet {outlet_id!r} is offline; {offline_hint}",
        )
    return controller_id, outlet_no


def _end_at_problem(gateway: Gateway, end_at: float, now: float) -> Problem | None:
    if end_at <= now:
        return Problem("end-at-past", "end_at has already passed")
    longest = gateway.settings.max_charge_s
    if end_at > now + longest + 60:
        return Problem("end-at-too-far", f"end_at may be at most {longest / 3600:g} hours away")
    return None


async def _record_start(
    conn: Conn,
    body: StartCharge,
    *,
    client_id: str,
    charge_id: str,
    end_at: float,
    now: float,
    digest: bytes,
) -> DesiredState | None:
    """The start's command and charge in one durable transaction (one round trip);
    the desired state to publish, or None when the guards let nothing be written."""
    try:
        async with conn.pipeline(), conn.transaction():
            recorded = await command_records.record_start(
                conn,
                outlet_id=body.outlet_id,
                charge_id=charge_id,
                partner_charge_id=body.charge_id,
                client_id=client_id,
                end_at=end_at,
                issued_at=now,
                issued_by=client_id,
                request_sha256=digest,
            )
        return await recorded.desired()
    except errors.UniqueViolation as exc:
        if "charges_one_active_per_outlet" in str(exc):
            raise Problem("outlet-busy", f"outlet {body.outlet_id!r} is charging") from None
        raise Problem("charge-id-conflict", f"charge {body.charge_id!r} exists") from None


async def history(request: Request) -> Response:
    """The client's charges, newest request first, filtered and paged by cursor."""
    gateway = context.of(request)
    caller = await gateway.authorize(request, "charges:read")
    wanted = inputs.query(request, ChargeSearch)
    async with gateway.pool.connection() as conn:
        rows, after = await repository.charge_history(conn, caller.client_id, wanted)
    page = ChargePage(charges=[r.model() for r in rows], next_cursor=after)
    return JSONResponse(page.model_dump(mode="json"))


async def read(request: Request) -> Response:
    gateway = context.of(request)
    caller = await gateway.authorize(request, "charges:read")
    async with gateway.pool.connection() as conn:
        row = await _own_charge(conn, caller, inputs.charge_id(request))
    return JSONResponse(row.json())


async def stop(request: Request) -> Response:
    gateway = context.of(request)
    caller = await gateway.authorize(request, "charges:write")
    async with gateway.pool.connection() as conn:
        row = await _own_charge(conn, caller, inputs.charge_id(request))
        if lifecycle.State(row.state) not in lifecycle.STOPPABLE:
            return JSONResponse(row.json())  # stopping, stopped or failed: idempotent
        async with conn.pipeline(), conn.transaction():
            want = await command_records.record_stop(
                conn,
                charge_id=row.charge_id,
                controller_id=row.controller_id,
                outlet=row.outlet_no,
                issued_by=caller.client_id,
                reason="partner stopped",
                now=gateway.settings.now(),
            )
    row = await gateway.send(row.charge_id, want)
    return JSONResponse(row.json())


async def _own_charge(conn: Conn, caller: Caller, partner_charge_id: str) -> ChargeRow:
    cur = await repository.select_own_charge(conn, caller.client_id, partner_charge_id)
    row = await cur.fetchone()
    if row is None:
        raise Problem("unknown-charge", "no such charge for this client")
    logformat.bind(charge_id=row.charge_id, outlet_id=row.outlet_id)  # the charges table's key
    return row

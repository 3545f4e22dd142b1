"""``/v1/outlets/{outlet_id}``: the last known status, a fresh status on request (answered
by webhook), and one month's usage and fee."""

from __future__ import annotations

import logging
import secrets

import aiomqtt
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cloud_gateway import context, inputs, repository
from cloud_gateway.models import OutletStatus, StatusRequestAccepted, Usage, UsageQuery
from cloud_gateway.problems import Problem
from cloud_gateway.resources.charges import reachable
from schemas.codec import encode
from schemas.messages import StatusRequest

log = logging.getLogger(__name__)


async def status(request: Request) -> Response:
    """The outlet's last known state: its latest minute reading and its controller."""
    gateway = context.of(request)
    caller = await gateway.authorize(request, "outlets:read")
    outlet_id = inputs.outlet_id(request)
    async with gateway.pool.connection() as conn:
        row = await repository.outlet_status(conn, caller.client_id, outlet_id)
    if row is None:
        raise Problem("unknown-outlet", f"no outlet {outlet_id!r}")
    answer = OutletStatus(
        outlet_id=outlet_id,
        controller_online=bool(row["online"]),
        measured_at=row["minute"],
        energy_wh=row["energy_wh"],
        voltage_v=row["voltage_v"],
        current_a=row["current_a"],
        breaker_on=row["breaker_on"],
        charging=row["charging"],
        active_charge_id=row["active_charge_id"],
    )
    return JSONResponse(answer.model_dump(mode="json"))


async def status_request(request: Request) -> Response:
    """Ask the edge for a fresh sample; the answer comes as an ``outlet.status`` webhook."""
    gateway = context.of(request)
    caller = await gateway.authorize(request, "outlets:read")
    outlet_id = inputs.outlet_id(request)
    client = gateway.client
    if client is None:
        raise Problem("broker-unavailable", "the request could not be sent")
    request_id = f"sr_{secrets.token_hex(12)}"
    async with gateway.pool.connection() as conn:
        route = await repository.outlet_route(conn, outlet_id)
        controller_id, outlet_no = reachable(
            await route.fetchone(),
            outlet_id,
            f"GET /v1/outlets/{outlet_id}/status has its last known status",
        )
        requested_at = await repository.add_status_request(
            conn,
            request_id=request_id,
            client_id=caller.client_id,
            outlet_id=outlet_id,
            controller_id=controller_id,
            outlet_no=outlet_no,
        )
    ask = StatusRequest(
        controller_id=controller_id,
        request_id=request_id,
        at=gateway.settings.now(),
        outlet=outlet_no,
    )
    try:
        await client.publish(gateway.topics.request(controller_id), encode(ask), qos=1)
    except aiomqtt.MqttError as exc:  # recorded: the time-out answers from the store
        log.warning("status request %s not sent (%s)", request_id, exc)
    accepted = StatusRequestAccepted(
        request_id=request_id, outlet_id=outlet_id, state="pending", requested_at=requested_at
    )
    return JSONResponse(accepted.model_dump(mode="json"), status_code=202)


async def usage(request: Request) -> Response:
    """One month of the client's charges on an outlet: kWh, count and fee."""
    gateway = context.of(request)
    caller = await gateway.authorize(request, "usage:read")
    outlet_id = inputs.outlet_id(request)
    month = inputs.query(request, UsageQuery).month
    async with gateway.pool.connection() as conn:
        found = await repository.month_usage(
            conn, caller.client_id, outlet_id, inputs.first_day(month)
        )
    if found is None:
        raise Problem("unknown-outlet", f"no outlet {outlet_id!r}")
    answer = Usage(
        outlet_id=outlet_id,
        month=month,
        timezone=found.timezone,
        charges=found.charges,
        energy_kwh=float(found.energy_kwh),
        tariff_per_kwh=found.tariff_per_kwh,
        fee=found.fee,
        currency=found.currency,
    )
    return JSONResponse(answer.model_dump(mode="json"))

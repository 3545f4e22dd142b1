"""The webhook contract: the body of every event chargeline sends a partner, one model per
event type.

Producers build the ``data`` of an event as a plain dict (``charging.outbox.enqueue``);
the outbox validates it against the model of its type before it is stored, and the
gateway's OpenAPI document describes the webhooks from the same models, so the document
cannot drift from what partners receive. Times are Unix epoch seconds (UTC), as in every
event since the first; energy is in watt-hours.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.errors import InputError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


ChargeState = Literal[
    "requested", "queued", "on", "drawing", "paused", "stopping", "stopped", "failed"
]


class ChargeEvent(_Strict):
    """What every charge event says."""

    charge_id: str = Field(description="the partner's id for the charge")
    outlet_id: str = Field(description="the outlet's public id (its QR code)")
    state: ChargeState = Field(description="the charge's state after this event")
    at: float = Field(description="when it happened (epoch seconds)")
    end_at: float = Field(description="when the charge ends at the latest (epoch seconds)")


class ChargeStarted(ChargeEvent):
    """``charge.started``: the breaker closed."""


class ChargeCurrentRise(ChargeEvent):
    """``charge.current_rise``: the outlet's current crossed its threshold."""

    current: str = Field(description="the measured current, e.g. '15.9 A'")


class ChargePaused(ChargeEvent):
    """``charge.paused``: the charge waits for room under the site's cap; it is not refused
    and goes on by itself (``charge.started`` for a queued charge, ``charge.resumed`` for a
    paused one). ``state`` is ``queued`` (it has not started) or ``paused``."""

    reason: str = Field(
        description="waiting for capacity, site capacity (rotated out), safe share (the site's"
        " allocator is unreachable), …"
    )
    expected_start_at: float | None = Field(
        description="when the site's allocator expects it to get current (epoch seconds);"
        " null when it has no estimate yet"
    )


class ChargeResumed(ChargeEvent):
    """``charge.resumed``: a paused charge has current again."""


class MeterReading(_Strict):
    minute: float = Field(description="when the outlet's meter was read (epoch seconds)")
    energy_wh: float = Field(description="the outlet's cumulative energy register")


class ChargeMeter(_Strict):
    first: MeterReading | None = Field(description="the reading the energy counts from")
    last: MeterReading | None = Field(description="the reading the energy counts to")


class ChargeStopped(ChargeEvent):
    """``charge.stopped``: the breaker opened; the energy the car received."""

    reason: str = Field(description="partner stopped, end_at reached, over-current trip, …")
    energy_wh: float = Field(description="last − first, rounded to the mWh")
    meter: ChargeMeter


class ChargeFailed(ChargeEvent):
    """``charge.failed``: a start that did not happen."""

    reason: str = Field(description="breaker did not move, start timed out, or controller offline")


class StatusReading(_Strict):
    at: float
    energy_wh: float
    voltage_v: float
    current_a: float
    breaker_on: bool


class ActiveCharge(_Strict):
    charge_id: str
    state: ChargeState
    energy_wh: float


class OutletStatusAnswer(_Strict):
    """``outlet.status``: the answer to a status request."""

    request_id: str
    outlet_id: str
    source: Literal["edge", "last_reading"] = Field(
        description="edge: a fresh sample; last_reading: the edge did not answer in time"
    )
    reading: StatusReading | None
    charging: bool = Field(description="a charge is active on the outlet, whoever started it")
    charge: ActiveCharge | None = Field(
        description="the outlet's active charge, when it is this client's"
    )


class ControllerPresence(_Strict):
    """``controller.online`` / ``controller.offline``."""

    controller_id: str
    online: bool
    since: float = Field(description="when the controller's connection started (epoch s)")
    reason: str = Field(
        description="connected, stopped, connection lost, disconnected, silent for … s, heard again"
    )
    outlet_ids: list[str]


class OutletAvailability(_Strict):
    """``outlet.availability``: an outlet became available, or stopped being available.

    Coalesced and rate-limited per outlet: at most one per outlet per interval (30 s by
    default), carrying the outlet's status when it was sent. Apply one only if its ``at``
    is newer than the last you applied for the outlet."""

    outlet_id: str
    site_id: str
    available: bool = Field(description="a charge can start on the outlet now")
    status: Literal["available", "charging", "offline", "out_of_service"] = Field(
        description="why it is (un)available: charging (a charge is active, whoever's),"
        " offline (its controller), out_of_service (the operator)"
    )
    at: float = Field(description="when the status was read (epoch seconds)")


#: Every event type and the model of its ``data``.
EVENTS: dict[str, type[BaseModel]] = {
    "charge.started": ChargeStarted,
    "charge.current_rise": ChargeCurrentRise,
    "charge.paused": ChargePaused,
    "charge.resumed": ChargeResumed,
    "charge.stopped": ChargeStopped,
    "charge.failed": ChargeFailed,
    "outlet.status": OutletStatusAnswer,
    "controller.online": ControllerPresence,
    "controller.offline": ControllerPresence,
    "outlet.availability": OutletAvailability,
}


class UnknownEvent(InputError):
    """An event type the contract does not have."""


def check(kind: str, data: dict[str, Any]) -> None:
    """Raise (``UnknownEvent``, pydantic's ``ValidationError``) unless ``data`` is what
    the contract promises for ``kind``."""
    model = EVENTS.get(kind)
    if model is None:
        raise UnknownEvent(f"no webhook event type {kind!r}")
    model.model_validate(data, strict=True)

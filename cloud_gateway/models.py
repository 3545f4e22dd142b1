"""The partner API's bodies, as pydantic models: what a partner sends and what it gets.

The handlers validate requests with these models and build every answer through them, and
the OpenAPI document (``cloud_gateway.openapi``) is generated from the same models, so the
document cannot drift from the API.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from schemas.events import ChargeState
from schemas.messages import CHARGE_ID_PATTERN, OUTLET_ID_PATTERN

__all__ = ["CHARGE_ID_PATTERN", "MONTH_PATTERN", "OUTLET_ID_PATTERN"]

#: A usage month, ``YYYY-MM``: a real month of a four-digit year (0000-00 is none).
MONTH_PATTERN = r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])$"

OutletId = Annotated[
    str, Field(pattern=OUTLET_ID_PATTERN, description="the outlet's public id (its QR code)")
]
ChargeId = Annotated[str, Field(pattern=CHARGE_ID_PATTERN, description="the partner's id")]
#: Times in answers are UTC, whatever the database session's time zone.
Utc = Annotated[dt.datetime, AfterValidator(lambda t: t.astimezone(dt.UTC))]


class StartCharge(BaseModel):
    """``POST /v1/charges``. Unknown fields are refused, so a misspelt one is not ignored."""

    model_config = ConfigDict(extra="forbid")

    outlet_id: OutletId
    charge_id: ChargeId
    end_at: AwareDatetime | None = Field(
        default=None,
        description="RFC 3339 with a UTC offset (e.g. 2027-01-01T09:00:00+09:00);"
        " absent: the longest charge (24 hours) from now",
    )


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Charge(_Answer):
    """A charge as the partner sees it."""

    charge_id: str
    outlet_id: str
    state: ChargeState
    requested_at: Utc
    started_at: Utc | None = Field(description="when the breaker closed")
    current_rise_at: Utc | None = Field(description="when the car started to draw")
    stopped_at: Utc | None
    end_at: Utc = Field(description="when the charge ends at the latest")
    stop_reason: str | None
    failure: str | None
    energy_wh: float = Field(description="energy delivered so far (Wh, rounded to the mWh)")


class OutletStatus(_Answer):
    """``GET /v1/outlets/{outlet_id}/status``: the last known state of an outlet."""

    outlet_id: str
    controller_online: bool
    measured_at: Utc | None = Field(description="the last stored minute reading")
    energy_wh: float | None
    voltage_v: float | None
    current_a: float | None
    breaker_on: bool | None
    charging: bool = Field(description="a charge is active on the outlet, whoever started it")
    active_charge_id: str | None = Field(
        description="the active charge's id, when it is this client's (others' stay private)"
    )


class StatusRequestAccepted(_Answer):
    """``POST /v1/outlets/{outlet_id}/status-requests``: the answer comes as a webhook."""

    request_id: str = Field(description="the outlet.status webhook carries it")
    outlet_id: str
    state: Literal["pending"]
    requested_at: Utc


class Usage(_Answer):
    """``GET /v1/outlets/{outlet_id}/usage``: a month of this client's charges."""

    outlet_id: str
    month: str = Field(pattern=MONTH_PATTERN, description="YYYY-MM, in the site's time zone")
    timezone: str
    charges: int
    energy_kwh: float
    tariff_per_kwh: float
    fee: float
    currency: str


class ProblemDocument(BaseModel):
    """RFC 9457: ``type`` names the problem (see its description for every value)."""

    type: str
    title: str
    status: int
    detail: str

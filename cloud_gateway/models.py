"""The partner API's bodies, as pydantic models: what a partner sends and what it gets.

The handlers validate requests with these models and build every answer through them, and
the OpenAPI document (``cloud_gateway.openapi``) is generated from the same models, so the
document cannot drift from the API.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    computed_field,
    field_validator,
    model_validator,
)

from cloud_gateway import places
from schemas.errors import InputError
from schemas.events import ChargeState
from schemas.messages import CHARGE_ID_PATTERN, OUTLET_ID_PATTERN

__all__ = ["CHARGE_ID_PATTERN", "MONTH_PATTERN", "OUTLET_ID_PATTERN", "SITE_ID_PATTERN"]

#: Sites have public ids of the same alphabet as outlets (the registry checks both).
SITE_ID_PATTERN = OUTLET_ID_PATTERN

#: A usage month, ``YYYY-MM``: a real month of a four-digit year (0000-00 is none).
MONTH_PATTERN = r"^[1-9][0-9]{3}-(0[1-9]|1[0-2])$"

OutletId = Annotated[
    str, Field(pattern=OUTLET_ID_PATTERN, description="the outlet's public id (its QR code)")
]
ChargeId = Annotated[str, Field(pattern=CHARGE_ID_PATTERN, description="the partner's id")]
#: Times in answers are UTC, whatever the database session's time zone.
Utc = Annotated[dt.datetime, AfterValidator(lambda t: t.astimezone(dt.UTC))]
#: Money in answers: a JSON number with at most two decimals (computed in the database as
#: exact decimals; ``fee`` of a charge, sums of fees).
Money = Annotated[
    Decimal,
    PlainSerializer(float, return_type=float, when_used="json"),
    Field(description="in the site's currency, rounded to the hundredth"),
]
#: A cursor from the previous page's ``next_cursor``; opaque.
Cursor = Annotated[str, Field(min_length=1, max_length=400, pattern=r"^[A-Za-z0-9_-]+$")]
Limit = Annotated[int, Field(ge=1, le=100, description="items per page (default 20)")]
OutletKind = Literal["ac_outlet", "ocpp_ac", "ocpp_dc"]
OutletAvailability = Literal["available", "charging", "offline", "out_of_service"]


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


class SetCap(BaseModel):
    """``POST /v1/sites/{site_id}/caps``: set the site's cap for a window (load management).
    Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")

    cap_a: float = Field(
        ge=0,
        le=20_000,
        allow_inf_nan=False,
        description="what the building and every outlet together may draw (A); at most the"
        " contract current, unless the reason is solar_surplus (at most twice it)",
    )
    starts_at: AwareDatetime | None = Field(
        default=None, description="RFC 3339 with a UTC offset; absent: now"
    )
    ends_at: AwareDatetime | None = Field(
        default=None, description="RFC 3339 with a UTC offset; absent: until removed"
    )
    reason: Literal["demand_response", "maintenance", "solar_surplus", "manual"] = Field(
        default="manual", description="why the cap changes"
    )
    note: str = Field(default="", max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")


class _Query(BaseModel):
    """Query parameters: each at most once, unknown ones refused (a misspelt filter
    would otherwise widen the answer without a word)."""

    model_config = ConfigDict(extra="forbid")


class SiteSearch(_Query):
    """``GET /v1/sites``."""

    near: str | None = Field(
        default=None,
        pattern=r"^-?[0-9]{1,2}(\.[0-9]{1,15})?,-?[0-9]{1,3}(\.[0-9]{1,15})?$",
        description="lat,lon in WGS 84 degrees (e.g. 35.6812,139.7671): sites within"
        " radius_km, nearest first; without it, every site by id",
    )
    radius_km: Annotated[float, Field(gt=0, le=200)] | None = Field(
        default=None, description="with near: how far to search (default 10, at most 200)"
    )
    available: bool | None = Field(
        default=None,
        description="true: only outlets available now (controller online, in service, no"
        " active charge), and only sites that have one",
    )
    kind: OutletKind | None = Field(
        default=None, description="only outlets of this kind, and only sites that have one"
    )
    limit: Limit = 20
    cursor: Cursor | None = None

    @field_validator("near")
    @classmethod
    def _a_point(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                places.Point.parse(value)
            except InputError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _radius_with_a_point(self) -> SiteSearch:
        if self.radius_km is not None and self.near is None:
            raise ValueError("radius_km needs near")
        return self

    def centre(self) -> places.Point | None:
        return None if self.near is None else places.Point.parse(self.near)


class ChargeSearch(_Query):
    """``GET /v1/charges``: the client's charges, newest request first."""

    outlet_id: OutletId | None = None
    site_id: Annotated[str, Field(pattern=SITE_ID_PATTERN)] | None = None
    state: ChargeState | None = None
    requested_from: AwareDatetime | None = Field(
        default=None, description="RFC 3339: charges requested at or after this instant"
    )
    requested_before: AwareDatetime | None = Field(
        default=None, description="RFC 3339: charges requested before this instant"
    )
    limit: Limit = 20
    cursor: Cursor | None = None


class UsageQuery(_Query):
    """``GET /v1/usage`` and ``GET /v1/outlets/{outlet_id}/usage``."""

    month: str = Field(
        pattern=MONTH_PATTERN,
        description="YYYY-MM; a charge counts in the month it stopped, in its site's time zone",
    )


class _Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MeterReading(_Answer):
    at: Utc = Field(description="when the outlet's meter was read")
    energy_wh: float = Field(description="the outlet's cumulative energy register")


class ChargeMeter(_Answer):
    first: MeterReading | None
    last: MeterReading | None


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
    energy_kwh: float = Field(description="the energy billed: energy_wh / 1000, rounded to the Wh")
    tariff_per_kwh: Money = Field(description="the price in force when the charge was requested")
    currency: str = Field(description="ISO 4217")
    fee: Money = Field(
        description="energy_kwh × tariff_per_kwh, rounded half away from zero to the"
        " hundredth; final once the charge has stopped"
    )
    meter: ChargeMeter = Field(
        description="the outlet's meter readings the energy counts from and to: an auditable"
        " record (energy_wh = last − first)"
    )
    expected_start_at: Utc | None = Field(
        default=None,
        description="while the charge is queued or paused (waiting for room under the site's"
        " cap): when the site's allocator expects it to get current; null otherwise, or when"
        " it has no estimate yet",
    )


class CapWindow(_Answer):
    id: int
    cap_a: float
    starts_at: Utc
    ends_at: Utc | None = Field(description="null: until removed")
    reason: str
    set_by: str = Field(description="who set it: client:ID (the operator API) or cli:USER")
    created_at: Utc


class SiteLoadNow(_Answer):
    at: Utc = Field(description="when the site's allocator last measured it")
    site_a: float = Field(description="the site's current: building and outlets (A)")
    building_a: float
    outlets_a: float
    allocated_a: float = Field(description="what the allocator gave the charges (A)")
    charging: int
    waiting: int = Field(description="charges queued or paused for room under the cap")


class SiteCap(_Answer):
    """A site's cap: in force now, the windows in force or scheduled, and its last load."""

    site_id: str
    cap_a: float = Field(description="the cap in force now (A)")
    source: str = Field(description="the window's reason, or the default (contract less margin)")
    window_id: int | None
    windows: list[CapWindow]
    load: SiteLoadNow | None = Field(description="null: no allocation in the last 10 minutes")


class ChargePage(_Answer):
    """``GET /v1/charges``: a page of the client's charges, newest request first."""

    charges: list[Charge]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: none")


class PlaceOutlet(_Answer):
    outlet_id: str
    kind: OutletKind
    rated_current_a: float
    status: OutletAvailability

    @computed_field(description="status is available: a charge can start now")  # type: ignore[prop-decorator]
    @property
    def available(self) -> bool:
        return self.status == "available"


class Place(_Answer):
    """A site: where it is, when it is open, and its outlets."""

    site_id: str
    name: str
    address: str
    latitude: float | None
    longitude: float | None
    distance_km: float | None = Field(description="from near (null without near)")
    opening_hours: str = Field(
        description="OpenStreetMap opening_hours syntax: '24/7', or rules such as"
        " 'Mo-Fr 07:00-22:00; Sa,Su 09:00-18:00; PH off'"
    )
    access_notes: str
    timezone: str
    currency: str
    tariff_per_kwh: Money = Field(description="the price in force now")
    available_outlets: int = Field(description="how many of the site's outlets are available")
    outlets: list[PlaceOutlet] = Field(description="the outlets the filters kept")


class PlacePage(_Answer):
    """``GET /v1/sites``."""

    sites: list[Place]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null: none")


class LiveOutlet(PlaceOutlet):
    measured_at: Utc | None = Field(description="the last stored minute reading")
    current_a: float | None
    energy_wh: float | None


class SiteDetail(Place):
    """``GET /v1/sites/{site_id}``: the site with each outlet's live state."""

    outlets: list[LiveOutlet]  # type: ignore[assignment]


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
    tariff_per_kwh: Money = Field(description="the price in force now")
    fee: Money = Field(description="the sum of the charges' fees, each at its own tariff")
    currency: str


class UsageTotal(_Answer):
    charges: int
    energy_kwh: float = Field(description="the sum of the charges' energy, each in kWh to the Wh")
    fee: Money = Field(description="the sum of the charges' fees, each at its own tariff")


class OutletUsage(UsageTotal):
    outlet_id: str


class SiteUsage(UsageTotal):
    site_id: str
    name: str
    timezone: str
    currency: str
    outlets: list[OutletUsage]


class CurrencyTotal(UsageTotal):
    currency: str


class ClientUsage(_Answer):
    """``GET /v1/usage``: a month of this client's stopped charges, by site and outlet;
    each figure is the sum of the charge records (``GET /v1/charges``) it covers."""

    month: str = Field(pattern=MONTH_PATTERN)
    totals: list[CurrencyTotal] = Field(description="one per currency")
    sites: list[SiteUsage]


class ProblemDocument(BaseModel):
    """RFC 9457: ``type`` names the problem (see its description for every value)."""

    type: str
    title: str
    status: int
    detail: str

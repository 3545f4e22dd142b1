"""The messages on the wire, one ``NamedTuple`` per topic kind.

Why named tuples: every payload travels array-shaped (``[version, field, field, …]``), which
is ~30% smaller and ~3× faster to decode than map-shaped msgpack (FIELD-NOTES.md). A named
tuple *is* that array once the version is stripped, so the codec needs no per-message
mapping code, and the minute readings can go straight into a COPY as row tuples. pydantic
validates them (strict mode, through a ``TypeAdapter``) using the constraints written
beside each field below; these constraints are the contract's hard limits.

Times are Unix epoch seconds (UTC). Energy is cumulative and in watt-hours.

Wire versions. Version 1 carried AC outlets: at most 100 A and 500 V, no power, no state of
charge. Version 2 carries DC fast chargers too (OCPP stations): up to 500 A and 1,000 V, and
each reading may add its power (W) and the car's state of charge (%). The types below are
version 2's; ``schemas.codec`` still decodes version 1, holding it to version 1's limits
(``V1_MAX_AMPS``, ``V1_MAX_VOLTS``), and writes version 1 whenever a message fits it, so an
AC edge and a cloud of either version understand each other.
"""

from __future__ import annotations

import enum
from typing import Annotated, NamedTuple

from pydantic import Field

from schemas.topics import MAX_OUTLETS

#: Messages must be from this century: 2000-01-01 .. 2100-01-01.
MIN_TIME = 946_684_800
MAX_TIME = 4_102_444_800
#: Most minute frames one MeterBatch may carry (four hours of catch-up).
MAX_FRAMES = 240
#: Most batch numbers one MeterAck may acknowledge.
MAX_ACK_SEQS = 1024
MAX_SEQ = 2**63 - 1

ControllerId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
OutletNo = Annotated[int, Field(ge=1, le=MAX_OUTLETS)]
Seq = Annotated[int, Field(ge=1, le=MAX_SEQ)]
Generation = Annotated[int, Field(ge=0, le=MAX_SEQ)]
Timestamp = Annotated[float, Field(ge=MIN_TIME, le=MAX_TIME, allow_inf_nan=False)]
Minute = Annotated[int, Field(ge=MIN_TIME, le=MAX_TIME, multiple_of=60)]
#: Cumulative energy: up to 10 TWh fits any meter register.
EnergyWh = Annotated[float, Field(ge=0, le=1e13, allow_inf_nan=False)]
#: AC outlets are 200 V and DC chargers up to 1,000 V; beyond is a broken sensor.
Volts = Annotated[float, Field(ge=0, le=1000, allow_inf_nan=False)]
#: AC outlets are rated 16–32 A and DC chargers up to 500 A (a 150 kW charger at 300 V).
Amps = Annotated[float, Field(ge=0, le=500, allow_inf_nan=False)]
#: Power drawn, up to 1 MW (the largest DC chargers are 400 kW).
Watts = Annotated[float, Field(ge=0, le=1_000_000, allow_inf_nan=False)]
#: A car's state of charge.
Percent = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)]
#: Version 1's limits (AC 200 V outlets: 100 A left room for a fault current).
V1_MAX_AMPS = 100.0
V1_MAX_VOLTS = 500.0
#: No control characters: PostgreSQL text cannot hold NUL, and logs should not hold the rest.
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
ShortText = Annotated[str, Field(max_length=200, pattern=PRINTABLE)]
#: What a partner may use as a charge id.
CHARGE_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,64}$"
#: An outlet's public id (what its QR code carries), as the registry allows it.
OUTLET_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ChargeId = Annotated[str, Field(min_length=1, max_length=64, pattern=PRINTABLE)]


class OutletReading(NamedTuple):
    outlet: OutletNo
    energy_wh: EnergyWh
    voltage_v: Volts
    current_a: Amps
    breaker_on: bool
    #: Version 2: the power drawn and the car's state of charge, when the outlet knows them.
    power_w: Watts | None = None
    soc_percent: Percent | None = None


class MeterFrame(NamedTuple):
    """One minute of one controller: the main meter and up to 8 outlets."""

    minute: Minute
    main_energy_wh: EnergyWh
    outlets: Annotated[tuple[OutletReading, ...], Field(max_length=MAX_OUTLETS)]


class MeterBatch(NamedTuple):
    """``ctl/{cid}/meter``: one or more minute frames, numbered by ``seq``."""

    controller_id: ControllerId
    seq: Seq
    frames: Annotated[tuple[MeterFrame, ...], Field(min_length=1, max_length=MAX_FRAMES)]


class MeterAck(NamedTuple):
    """``ctl/{cid}/meter/ack``: the batches now committed to the store.

    It names every committed ``seq`` rather than only the highest: a batch the broker
    dropped must never be deleted from the edge's buffer because a later one arrived.
    An ack with no ``seqs`` only tells the time: the cloud sends one when a controller
    comes online, so that a fresh edge need not wait for its first batch to learn it.
    """

    controller_id: ControllerId
    seqs: Annotated[tuple[Seq, ...], Field(max_length=MAX_ACK_SEQS)]
    #: The cloud's time when the ack was sent: the edge's only source for its estimate of
    #: the cloud clock (a command never judges itself). Absent from older clouds' acks,
    #: which still decode; an edge that hears only those applies no ON.
    at: Timestamp | None = None


class EdgeEventKind(enum.StrEnum):
    BREAKER_SWITCHED = "breaker_switched"
    BREAKER_FAILED = "breaker_failed"
    OVERCURRENT_TRIP = "overcurrent_trip"
    CURRENT_CROSSED = "current_crossed"
    #: The answer to a ``StatusRequest``; ``detail`` carries its ``request_id``.
    STATUS = "status"
    #: Version 2 (load management): the edge opened a charging outlet's breaker to stay
    #: within its budget (``detail`` says why), or closed it again once there was room.
    PAUSED = "paused"
    RESUMED = "resumed"


class EdgeEvent(NamedTuple):
    """``ctl/{cid}/event``: an immediate fact from the edge (seconds, not minutes).

    Every event carries the outlet's reading at that moment (``at`` is cloud time).
    """

    controller_id: ControllerId
    at: Timestamp
    kind: Annotated[EdgeEventKind, Field(strict=False)]  # travels as its string value
    outlet: OutletNo
    generation: Generation
    current_a: Amps
    breaker_on: bool
    detail: ShortText
    energy_wh: EnergyWh
    voltage_v: Volts


class DesiredState(NamedTuple):
    """``ctl/{cid}/outlet/{n}/desired`` (retained): what the cloud wants of one outlet."""

    controller_id: ControllerId
    outlet: OutletNo
    on: bool
    generation: Generation
    charge_id: ChargeId | None
    end_at: Timestamp | None
    issued_at: Timestamp


class CommandOutcome(enum.StrEnum):
    APPLIED = "applied"
    STALE = "stale"
    EXPIRED = "expired"
    BREAKER_FAILED = "breaker_failed"
    REFUSED_OFFLINE = "refused_offline"
    #: Version 2 (load management): the ON is taken (the charge is on the edge's books and
    #: ends at its ``end_at``) but waits for room in the controller's budget; the breaker
    #: closes, with a ``resumed`` event, when there is room.
    QUEUED = "queued"


class CommandAck(NamedTuple):
    """``ctl/{cid}/ack``: the result of applying one desired state, with the outlet's
    cumulative meter at that moment (a charge's energy counts from the switch itself)."""

    controller_id: ControllerId
    outlet: OutletNo
    generation: Generation
    outcome: Annotated[CommandOutcome, Field(strict=False)]  # travels as its string value
    breaker_on: bool
    at: Timestamp
    #: Absent from edges older than this field (their acks still decode); a charge's
    #: energy then comes from the minute readings alone.
    energy_wh: EnergyWh | None = None


class OutletState(NamedTuple):
    outlet: OutletNo
    breaker_on: bool
    applied_generation: Generation


class ReportedState(NamedTuple):
    """``ctl/{cid}/state`` (retained): what the edge is and has applied."""

    controller_id: ControllerId
    firmware: ShortText
    started_at: Timestamp
    outlets: Annotated[tuple[OutletState, ...], Field(max_length=MAX_OUTLETS)]


class Presence(NamedTuple):
    """``ctl/{cid}/presence`` (retained): birth on connect; the offline copy is the will."""

    controller_id: ControllerId
    online: bool
    since: Timestamp
    #: Why a controller is offline: ``stopped`` when it says so on a clean stop,
    #: ``connection lost`` in its will. Absent from older edges (still decoded).
    reason: ShortText | None = None


class StatusRequest(NamedTuple):
    """``ctl/{cid}/request``: publish a fresh sample of one outlet now.

    The edge answers with an ``EdgeEvent`` of kind ``status`` whose ``detail`` is
    ``request_id``.
    """

    controller_id: ControllerId
    request_id: ShortText
    at: Timestamp
    outlet: OutletNo


class Budget(NamedTuple):
    """``ctl/{cid}/budget`` (retained, version 2): the current this controller may draw, from
    the site's allocator (``charging.allocation``), and the order in which its outlets
    should charge. Versioned and expiring like a desired state (``edge_agent.budget``):
    a version applies once, an expired or late budget does not apply, and an edge without a
    valid budget keeps to ``fallback_a``, its static safe share from the registry."""

    controller_id: ControllerId
    version: Generation
    amps: Amps
    #: The outlets with a charge, in the order they should charge; the first get room first.
    order: Annotated[tuple[OutletNo, ...], Field(max_length=MAX_OUTLETS)]
    #: How many of ``order`` may charge while this budget holds: the rest wait their turn.
    #: An outlet not in ``order`` (a charge the allocator has not seen yet) may start if it
    #: fits ``amps``.
    admit: Annotated[int, Field(ge=0, le=MAX_OUTLETS)]
    issued_at: Timestamp
    expires_at: Timestamp
    #: What the controller may draw when it has no valid budget (the cloud is gone).
    fallback_a: Amps


class OutletLoad(NamedTuple):
    outlet: OutletNo
    current_a: Amps
    #: A charge is on the edge's books (its ON applied, not yet stopped).
    wants: bool
    #: The breaker is closed (a station: its transaction is charging).
    running: bool
    #: The most it draws when running (its rating, or the car's limit).
    max_a: Amps
    charge_id: ChargeId | None


class LoadReport(NamedTuple):
    """``ctl/{cid}/load`` (version 2): what a controller draws now, every few seconds, for
    the site's allocator. ``main_current_a`` is the site's main meter when this controller
    carries it (``main_meter`` in the registry)."""

    controller_id: ControllerId
    at: Timestamp
    budget_version: Generation
    #: Its outlets can be turned down rather than only switched (an OCPP station).
    modulating: bool
    main_current_a: Amps | None
    outlets: Annotated[tuple[OutletLoad, ...], Field(max_length=MAX_OUTLETS)]


Message = (
    MeterBatch
    | MeterAck
    | EdgeEvent
    | DesiredState
    | CommandAck
    | ReportedState
    | Presence
    | StatusRequest
    | Budget
    | LoadReport
)

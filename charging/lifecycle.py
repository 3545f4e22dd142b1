"""One charge's life as a pure state machine: ``step(charge, event) → (charge, notices)``.

::

    requested ──ack applied──▶ on ──current rise──▶ drawing
        │ │                     ▲ │                    │ ▲
        │ │ ack queued          │ │ paused             │ │ resumed
        │ ▼                     │ ▼                    ▼ │
        │ queued ──resumed──────┘ paused ◀──paused── (either)
        │                                │
        │ ack failed/refused,   stop requested, end_at, over-current trip, car full
        │ start timed out,      (from on, drawing, paused)
        │ controller offline            ▼
        ▼                      stopping ──ack applied / breaker opened──▶ stopped
      failed

Load management (DESIGN.md, "Site load management"): an ON the edge takes but cannot
switch yet for lack of room in its budget is acknowledged ``queued``; a running charge
whose breaker the edge opens to keep within its budget is ``paused``; either goes back to
charging when the edge reports it ``resumed`` (a queued charge then starts:
``charge.started``; a paused one: ``charge.resumed``). Waiting is never a failure: a
queued charge does not time out, and a stop of a queued charge is a stop like any other
(nothing was delivered, so it fails as ``stopped before it started``).

Inputs come from the API (start, stop), the edge (command acks, breaker events), ingest
(current rise, minute readings) and timers (start timeout). Each transition may produce
``Notice`` values, which become the partner's webhooks: ``charge.started``,
``charge.current_rise``, ``charge.stopped`` (energy in Wh and the reason) and
``charge.failed`` (the reason). Anything that does not fit the current state changes
nothing, so duplicated or late messages are harmless.

Energy is counted from the outlet's cumulative meter as the sum of the increases between
consecutive readings while the charge runs: the meter at the switch ON (carried by the
edge's acknowledgement), the minute readings, and the meter when the breaker opened (the
OFF acknowledgement, or the edge's event for a trip or its own timer). A missed minute
only merges two increases. A meter that resets (a reading below half the one before)
contributes what it has counted since the reset, never a negative amount; a reading only
a little lower was taken before the one it follows (minute stamps and switch times come
from different clocks at the edge) and adds nothing. The first and last readings used are
kept on the charge so the figure can be audited.

``charge.stopped`` goes out as soon as the breaker is open when the edge reported the
meter with it. From an edge that did not, it waits for the first minute reading at or
after the stop (which closes the count) or for ``ReadingsOverdue``; such a count starts
at the minute reading before or after the start.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import NamedTuple

from schemas.messages import CommandAck, CommandOutcome


class State(enum.StrEnum):
    REQUESTED = "requested"
    QUEUED = "queued"
    ON = "on"
    DRAWING = "drawing"
    PAUSED = "paused"
    STOPPING = "stopping"
    STOPPED = "stopped"
    FAILED = "failed"


ACTIVE = frozenset(
    {State.REQUESTED, State.QUEUED, State.ON, State.DRAWING, State.PAUSED, State.STOPPING}
)
#: States a stop request acts on (a stopping charge is already on its way).
STOPPABLE = ACTIVE - {State.STOPPING}
#: States in which a current rise can still change the charge: ``on``, and ``requested``
#: (its ack may come in the same write, before the rise).
AWAITING_RISE = frozenset({State.REQUESTED, State.ON})

#: A reading below this fraction of the one before means the meter was reset or replaced.
RESET_BELOW = 0.5


class Reading(NamedTuple):
    """A meter reading the count used. A named tuple rather than a frozen dataclass, as are
    ``MinuteReading`` below: ingest makes one for every reading of an evening peak, and a
    tuple is built in a third of the time."""

    minute: float
    energy_wh: float


@dataclass(frozen=True, slots=True)
class Charge:
    charge_id: str
    state: State
    start_generation: int
    stop_generation: int | None = None
    started_at: float | None = None
    rise_at: float | None = None
    stopped_at: float | None = None
    stop_reason: str | None = None
    failure: str | None = None
    first_reading: Reading | None = None
    last_reading: Reading | None = None
    energy_wh: float = 0.0
    #: ``charge.stopped`` went out (it waits for the first reading after the stop).
    reported: bool = False


# --- inputs ---------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Acked:
    generation: int
    outcome: CommandOutcome
    breaker_on: bool
    at: float
    #: The outlet's cumulative meter at the switch (None: not reported).
    energy_wh: float | None = None

    @classmethod
    def of(cls, ack: CommandAck) -> Acked:
        return cls(ack.generation, ack.outcome, ack.breaker_on, ack.at, ack.energy_wh)


@dataclass(frozen=True, slots=True)
class StartTimedOut:
    at: float


@dataclass(frozen=True, slots=True)
class ControllerOffline:
    at: float


@dataclass(frozen=True, slots=True)
class CurrentRose:
    at: float
    current_a: float


@dataclass(frozen=True, slots=True)
class StopRequested:
    """The API asked, or a timer decided (``end_at`` reached, car full); OFF has generation."""

    generation: int
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Paused:
    """The edge opened the breaker to keep within its budget; the charge goes on."""

    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class Resumed:
    """The edge closed the breaker of a queued or paused charge: there is room again.
    ``energy_wh``: the outlet's meter at that moment (a queued charge counts from it)."""

    at: float
    energy_wh: float | None = None


@dataclass(frozen=True, slots=True)
class BreakerOpened:
    """The edge opened the breaker on its own (its ``end_at`` timer, an over-current trip)."""

    reason: str
    at: float
    energy_wh: float | None = None  # the meter when it opened (None: not reported)


class MinuteReading(Reading):
    """A minute of the outlet's meter, from a batch. A ``Reading`` itself, so the count
    keeps it as its first or last reading as it is."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ReadingsOverdue:
    """No reading after the stop arrived in time: report the energy counted so far."""

    at: float


Event = (
    Acked
    | StartTimedOut
    | ControllerOffline
    | CurrentRose
    | StopRequested
    | BreakerOpened
    | Paused
    | Resumed
    | MinuteReading
    | ReadingsOverdue
)


# --- outputs --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Notice:
    #: charge.started | charge.current_rise | charge.paused | charge.resumed | charge.stopped |
    #: charge.failed
    kind: str
    at: float
    detail: str = ""


def start(charge_id: str, generation: int) -> Charge:
    return Charge(charge_id, State.REQUESTED, generation)


def step_all(
    charge: Charge, events: Iterable[Event]
) -> tuple[Charge, tuple[tuple[Notice, Charge], ...]]:
    """``step`` through ``events`` in order: the charge at the end, and every notice with
    the charge as that step left it (what its webhook tells).

    The same as stepping one event at a time, but a run of minute readings (ingest hands a
    charge one per minute of every batch) only moves the count, so outside ``stopped``
    (where a reading may close it) the run is counted on the count alone and the charge
    is built once at its end."""
    notices: list[tuple[Notice, Charge]] = []
    count: _Count | None = None  # the count of a run of readings, not yet on ``charge``
    for event in events:
        if isinstance(event, MinuteReading) and charge.state is not State.STOPPED:
            base = count or _count_of(charge)
            count = _counted(charge, base, event) or count
            continue
        if count is not None:
            charge, count = _with_count(charge, count), None
        charge, given = step(charge, event)
        notices.extend((notice, charge) for notice in given)
    if count is not None:
        charge = _with_count(charge, count)
    return charge, tuple(notices)


def _count_of(charge: Charge) -> _Count:
    return charge.first_reading, charge.last_reading, charge.energy_wh


def _with_count(charge: Charge, count: _Count) -> Charge:
    """``replace(charge, first_reading=…, last_reading=…, energy_wh=…)``, spelled out: it
    runs once per charge and write at an evening peak, and ``replace`` takes twice as long."""
    first, last, energy_wh = count
    c = charge
    return Charge(
        c.charge_id,
        c.state,
        c.start_generation,
        c.stop_generation,
        c.started_at,
        c.rise_at,
        c.stopped_at,
        c.stop_reason,
        c.failure,
        first,
        last,
        energy_wh,
        c.reported,
    )


def step(charge: Charge, event: Event) -> tuple[Charge, tuple[Notice, ...]]:
    s = charge.state
    if isinstance(event, MinuteReading):
        charge = _count(charge, event)
        if (
            s is State.STOPPED
            and charge.stopped_at is not None
            and event.minute >= charge.stopped_at
        ):
            return _report_stop(charge, event.minute)
        return charge, ()
    if isinstance(event, ReadingsOverdue) and s is State.STOPPED:
        return _report_stop(charge, event.at, " (no reading after the stop)")
    if isinstance(event, Acked):
        return _acked(charge, event)
    if isinstance(event, Paused | Resumed):
        return _capacity(charge, event)
    if isinstance(event, StartTimedOut | ControllerOffline) and s is State.REQUESTED:
        reason = "start timed out" if isinstance(event, StartTimedOut) else "controller offline"
        return _fail(charge, reason, event.at)
    if isinstance(event, CurrentRose) and s is State.ON:
        return replace(charge, state=State.DRAWING, rise_at=event.at), (
            Notice("charge.current_rise", event.at, f"{event.current_a:.1f} A"),
        )
    if isinstance(event, StopRequested) and s in (State.ON, State.DRAWING, State.PAUSED):
        return replace(
            charge,
            state=State.STOPPING,
            stop_generation=event.generation,
            stop_reason=event.reason,
        ), ()
    if isinstance(event, StopRequested) and s in (State.REQUESTED, State.QUEUED):
        # Stopped before the breaker closed: nothing was delivered.
        return _fail(charge, f"stopped before it started ({event.reason})", event.at)
    if isinstance(event, BreakerOpened) and s is State.QUEUED:  # its end_at came first
        return _fail(charge, f"{event.reason} before it started", event.at)
    if isinstance(event, BreakerOpened) and s in (
        State.ON,
        State.DRAWING,
        State.PAUSED,
        State.STOPPING,
    ):
        reason = charge.stop_reason or event.reason
        return _stop(replace(charge, stop_reason=reason), event.at, event.energy_wh)
    return charge, ()


def _capacity(charge: Charge, event: Paused | Resumed) -> tuple[Charge, tuple[Notice, ...]]:
    """The edge paused a charge to keep within its budget, or gave it current again."""
    s = charge.state
    if isinstance(event, Paused) and s in (State.ON, State.DRAWING):
        return replace(charge, state=State.PAUSED), (
            Notice("charge.paused", event.at, event.reason),
        )
    if isinstance(event, Resumed) and s is State.QUEUED:
        on = replace(charge, state=State.ON, started_at=event.at)
        ack = Acked(
            charge.start_generation, CommandOutcome.APPLIED, True, event.at, event.energy_wh
        )
        return _switched_on(on, ack), (Notice("charge.started", event.at),)
    if isinstance(event, Resumed) and s is State.PAUSED:
        back = State.DRAWING if charge.rise_at is not None else State.ON
        return replace(charge, state=back), (Notice("charge.resumed", event.at),)
    return charge, ()


def _acked(charge: Charge, ack: Acked) -> tuple[Charge, tuple[Notice, ...]]:
    s = charge.state
    if ack.generation == charge.start_generation and s is State.REQUESTED:
        if ack.outcome is CommandOutcome.APPLIED and ack.breaker_on:
            on = replace(charge, state=State.ON, started_at=ack.at)
            return _switched_on(on, ack), (Notice("charge.started", ack.at),)
        if ack.outcome is CommandOutcome.QUEUED:
            return replace(charge, state=State.QUEUED), (
                Notice("charge.paused", ack.at, "waiting for capacity"),
            )
        return _fail(charge, f"breaker command {ack.outcome.value}", ack.at)
    if ack.generation == charge.stop_generation and s is State.STOPPING:
        if not ack.breaker_on:
            return _stop(charge, ack.at, ack.energy_wh)
        return charge, (Notice("charge.failed", ack.at, "breaker did not open"),)
    return charge, ()


def _fail(charge: Charge, reason: str, at: float) -> tuple[Charge, tuple[Notice, ...]]:
    failed = replace(charge, state=State.FAILED, failure=reason, stopped_at=at)
    return failed, (Notice("charge.failed", at, reason),)


def _switched_on(charge: Charge, ack: Acked) -> Charge:
    """The meter at the switch is the baseline. Nothing has been counted yet (counting
    starts with the start), but a reading from after the switch may already be in: the
    meter only grows, so it is the one with more energy (stamps come from two clocks)."""
    if ack.energy_wh is None:
        return charge
    meter = Reading(ack.at, ack.energy_wh)
    last = charge.last_reading
    if last is None or last.energy_wh <= meter.energy_wh:
        return replace(charge, first_reading=meter, last_reading=meter)
    return replace(charge, first_reading=meter, energy_wh=_gain(meter, last))


def _stop(
    charge: Charge, at: float, energy_wh: float | None = None
) -> tuple[Charge, tuple[Notice, ...]]:
    """The breaker is open. With the meter at that moment the count is complete and
    ``charge.stopped`` goes out at once; otherwise it waits for the next minute reading.
    Nothing is drawn after the switch, so a counted reading with as much energy as the
    switch's meter is as late as it (whatever its stamp says)."""
    stopped = replace(charge, state=State.STOPPED, stopped_at=at)
    if energy_wh is None or charge.last_reading is None:
        return stopped, ()
    meter = Reading(at, energy_wh)
    last = charge.last_reading
    if meter.energy_wh > last.energy_wh or _is_reset(last, meter):
        stopped = replace(
            stopped, last_reading=meter, energy_wh=charge.energy_wh + _gain(last, meter)
        )
    return _report_stop(stopped, at)


def _is_reset(before: Reading, after: Reading) -> bool:
    """A meter that was replaced or reset starts again near zero. A reading only a little
    lower than the one before is not a reset: it was taken earlier and stamped by another
    clock (the edge stamps minutes with its own clock and switches with its estimate of
    the cloud's), and it counts nothing."""
    return after.energy_wh < before.energy_wh * RESET_BELOW


def _gain(before: Reading, after: Reading) -> float:
    """What the meter counted from ``before`` to ``after``; after a reset, since the reset.
    Callers leave readings out of order aside first (``_is_reset``)."""
    gained = after.energy_wh - before.energy_wh
    return after.energy_wh if gained < 0 else gained


def _report_stop(charge: Charge, at: float, note: str = "") -> tuple[Charge, tuple[Notice, ...]]:
    if charge.reported:
        return charge, ()
    detail = f"{charge.stop_reason or 'stopped'}{note}"
    return replace(charge, reported=True), (Notice("charge.stopped", at, detail),)


def _count(charge: Charge, reading: MinuteReading) -> Charge:
    """Track the baseline before the start, then add each minute's increase until the stop."""
    counted = _counted(charge, _count_of(charge), reading)
    return charge if counted is None else _with_count(charge, counted)


_Count = tuple[Reading | None, Reading | None, float]


def _counted(charge: Charge, count: _Count, reading: MinuteReading) -> _Count | None:
    """``_count`` on the count alone (first and last reading, energy), for a charge whose
    other fields are ``charge``'s: the new count, or None if the reading changes nothing."""
    if charge.state is State.FAILED or charge.reported:
        return None  # never started, or the count is closed and was reported
    now = reading
    first, last, energy_wh = count
    before_start = charge.started_at is None or reading.minute <= charge.started_at
    if before_start:
        # The latest reading at or before the start is the baseline, as long as nothing
        # has been counted on top of it yet.
        if first is None or (first == last and reading.minute > first.minute):
            return now, now, energy_wh
        return None
    if charge.stopped_at is not None and reading.minute > charge.stopped_at + 60:
        return None  # after the stop (the first minute after it still counts)
    if last is None:
        return now, now, energy_wh
    if reading.minute <= last.minute:
        return None  # duplicate or out of order: already counted
    if now.energy_wh < last.energy_wh and not _is_reset(last, now):
        return None  # taken before the last one: it adds nothing
    return first, now, energy_wh + _gain(last, now)

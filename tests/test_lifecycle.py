"""The charge lifecycle: transitions, the notices they make, and energy counting."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charging.lifecycle import (
    Acked,
    BreakerOpened,
    Charge,
    ControllerOffline,
    CurrentRose,
    Event,
    MinuteReading,
    Notice,
    Reading,
    ReadingsOverdue,
    StartTimedOut,
    State,
    StopRequested,
    start,
    step,
    step_all,
)
from schemas.messages import CommandOutcome

pytestmark = pytest.mark.pure

T0 = 1_800_000_000.0  # a minute boundary


def run(events: list[Event], charge: Charge | None = None) -> tuple[Charge, list[Notice]]:
    charge = charge or start("c-1", 1)
    notices: list[Notice] = []
    for event in events:
        charge, out = step(charge, event)
        notices.extend(out)
    return charge, notices


def kinds(notices: list[Notice]) -> list[str]:
    return [n.kind for n in notices]


ON = Acked(1, CommandOutcome.APPLIED, True, T0 + 10)


def test_the_whole_flow_notifies_each_step_once_with_the_energy() -> None:
    charge, notices = run(
        [
            MinuteReading(T0, 5000.0),  # the baseline: the minute holding the start
            ON,
            ON,  # a duplicated ack changes nothing
            CurrentRose(T0 + 40, 15.8),
            CurrentRose(T0 + 45, 15.9),
            MinuteReading(T0 + 60, 5150.0),
            MinuteReading(T0 + 120, 5350.0),
            MinuteReading(T0 + 120, 5350.0),  # redelivered
            StopRequested(2, "partner stopped", T0 + 150),
            Acked(2, CommandOutcome.APPLIED, False, T0 + 151),
            MinuteReading(T0 + 180, 5450.0),  # closes the count
            MinuteReading(T0 + 240, 5450.0),
        ]
    )
    assert kinds(notices) == ["charge.started", "charge.current_rise", "charge.stopped"]
    assert charge.state is State.STOPPED and charge.energy_wh == 450.0
    assert (charge.first_reading, charge.last_reading) == (
        Reading(T0, 5000.0),
        Reading(T0 + 180, 5450.0),
    )
    assert notices[-1].detail == "partner stopped" and notices[-1].at == T0 + 180


def test_failures_before_the_breaker_closes() -> None:
    cases: list[tuple[Event, str]] = [
        (Acked(1, CommandOutcome.BREAKER_FAILED, False, T0), "breaker command breaker_failed"),
        (Acked(1, CommandOutcome.REFUSED_OFFLINE, False, T0), "breaker command refused_offline"),
        (StartTimedOut(T0), "start timed out"),
        (ControllerOffline(T0), "controller offline"),
    ]
    for event, reason in cases:
        charge, notices = run([event, ON])  # a late ack after the failure changes nothing
        assert charge.state is State.FAILED and charge.failure == reason
        assert [(n.kind, n.detail) for n in notices] == [("charge.failed", reason)]


def test_the_edge_opening_the_breaker_stops_the_charge_with_its_reason() -> None:
    charge, notices = run(
        [ON, BreakerOpened("end_at reached", T0 + 3600), ReadingsOverdue(T0 + 3900)]
    )
    assert charge.state is State.STOPPED
    assert [(n.kind, n.detail) for n in notices][-1] == (
        "charge.stopped",
        "end_at reached (no reading after the stop)",
    )


def test_a_stop_the_breaker_ignores_is_reported_as_a_failure() -> None:
    _, notices = run(
        [
            ON,
            StopRequested(2, "partner stopped", T0 + 60),
            Acked(2, CommandOutcome.APPLIED, True, T0 + 61),
        ]
    )
    assert kinds(notices)[-1] == "charge.failed" and notices[-1].detail == "breaker did not open"


def test_a_meter_reset_and_a_missed_minute_do_not_lose_or_invent_energy() -> None:
    charge, _ = run(
        [
            MinuteReading(T0, 9000.0),
            ON,
            MinuteReading(T0 + 60, 9100.0),
            # T0 + 120 never arrived
            MinuteReading(T0 + 180, 9400.0),
            MinuteReading(T0 + 240, 50.0),  # the meter was replaced and reset
            MinuteReading(T0 + 300, 150.0),
        ]
    )
    assert charge.energy_wh == (9400.0 - 9000.0) + 50.0 + 100.0


def test_with_the_meter_at_each_switch_the_energy_is_exact_and_reported_at_once() -> None:
    # A charge inside one minute: no minute reading falls within it.
    on = Acked(1, CommandOutcome.APPLIED, True, T0 + 10, energy_wh=5000.0)
    charge, notices = run(
        [
            MinuteReading(T0, 5000.0),
            on,
            StopRequested(2, "partner stopped", T0 + 40),
            Acked(2, CommandOutcome.APPLIED, False, T0 + 41, energy_wh=5026.5),
            MinuteReading(T0 + 60, 5026.5),  # after the report: changes nothing
        ]
    )
    assert kinds(notices) == ["charge.started", "charge.stopped"]
    assert notices[-1].at == T0 + 41 and charge.energy_wh == 26.5
    assert (charge.first_reading, charge.last_reading) == (
        Reading(T0 + 10, 5000.0),
        Reading(T0 + 41, 5026.5),
    )
    # Over several minutes, and stopped by a trip whose event carries the meter; the
    # reading of the minute after the start arrived before the start's ack.
    charge, notices = run(
        [
            MinuteReading(T0 + 60, 5100.0),
            on,
            MinuteReading(T0 + 120, 5300.0),
            BreakerOpened("26.0 A sustained above the 20.0 A limit", T0 + 150, 5390.0),
        ]
    )
    assert kinds(notices)[-1] == "charge.stopped" and charge.energy_wh == 390.0
    assert notices[-1].detail == "26.0 A sustained above the 20.0 A limit"


def test_readings_from_around_a_switch_count_in_the_meters_order_not_their_stamps() -> None:
    """The edge stamps minutes with its own clock and switches with its estimate of the
    cloud's: a minute sampled just before the breaker closed (or opened) can look later
    than the switch. The meter only grows, so energy tells the true order; a reading a
    little below the one before is not a meter reset."""
    on = Acked(1, CommandOutcome.APPLIED, True, T0 + 10, energy_wh=11_680.5)
    charge, notices = run(
        [
            on,
            MinuteReading(T0 + 12, 11_680.2),  # sampled before the switch
            MinuteReading(T0 + 72, 11_780.5),
            StopRequested(2, "partner stopped", T0 + 100),
            MinuteReading(T0 + 132, 11_830.0),  # sampled before the stop
            Acked(2, CommandOutcome.APPLIED, False, T0 + 101, energy_wh=11_837.7),
        ]
    )
    assert kinds(notices)[-1] == "charge.stopped"
    assert abs(charge.energy_wh - (11_837.7 - 11_680.5)) < 1e-6


@given(
    st.lists(st.floats(0, 500), min_size=1, max_size=30),  # Wh drawn in each minute
    st.sets(st.integers(1, 29)),  # minutes whose reading is lost
)
def test_energy_is_the_meter_difference_whatever_minutes_are_missing(
    drawn: list[float], lost: set[int]
) -> None:
    charge = step(start("c-1", 1), MinuteReading(T0, 1000.0))[0]
    charge = step(charge, ON)[0]
    meter = 1000.0
    for i, wh in enumerate(drawn, start=1):
        meter += wh
        if i not in lost or i == len(drawn):
            charge = step(charge, MinuteReading(T0 + 60 * i, meter))[0]
    assert abs(charge.energy_wh - (meter - 1000.0)) < 1e-6


def _event() -> st.SearchStrategy[Event]:
    """Any input a charge can get, with times and meters drawn from a few minutes."""
    at = st.integers(0, 12).map(lambda m: T0 + 60.0 * m)
    energy = st.floats(0, 5000)
    return st.one_of(
        st.builds(MinuteReading, at, energy),
        st.builds(MinuteReading, at, energy),
        st.builds(MinuteReading, at, energy),
        st.builds(
            Acked,
            st.sampled_from([1, 2]),
            st.sampled_from(list(CommandOutcome)),
            st.booleans(),
            at,
            st.none() | energy,
        ),
        st.builds(CurrentRose, at, st.floats(0, 32)),
        st.builds(StopRequested, st.just(2), st.just("partner stopped"), at),
        st.builds(BreakerOpened, st.just("overcurrent trip"), at, st.none() | energy),
        st.builds(ReadingsOverdue, at),
        st.builds(StartTimedOut, at),
    )


@given(st.lists(_event(), max_size=40))
def test_stepping_a_whole_write_at_once_is_stepping_each_event(events: list[Event]) -> None:
    """Ingest steps each charge through a write's events with ``step_all``: the charge
    and every notice (with the charge each webhook describes) are ``step``'s, one by one."""
    charge = start("c-1", 1)
    expected: list[tuple[Notice, Charge]] = []
    for event in events:
        charge, out = step(charge, event)
        expected.extend((notice, charge) for notice in out)
    assert step_all(start("c-1", 1), events) == (charge, tuple(expected))


def test_a_count_put_back_keeps_every_other_field_of_the_charge() -> None:
    """``_with_count`` spells the charge out field by field (for speed): a field added to
    ``Charge`` and not to it would be silently reset. Every field here differs from its
    default, so any field it drops shows."""
    import dataclasses

    from charging.lifecycle import Charge, Reading, State, _with_count

    charge = Charge(
        charge_id="ch-1",
        state=State.STOPPED,
        start_generation=3,
        **{
            f.name: value
            for f, value in zip(
                dataclasses.fields(Charge)[3:],
                (
                    4,
                    10.0,
                    20.0,
                    30.0,
                    "why",
                    "how",
                    Reading(1.0, 2.0),
                    Reading(3.0, 4.0),
                    5.0,
                    True,
                ),
                strict=True,
            )
        },
    )
    count = (Reading(7.0, 8.0), Reading(9.0, 10.0), 11.0)
    expected = dataclasses.replace(
        charge, first_reading=count[0], last_reading=count[1], energy_wh=count[2]
    )
    assert _with_count(charge, count) == expected

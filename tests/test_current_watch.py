"""Rule 8 and the current-rise fast path, decided by the pure ``watch_current``: sustained
over-current trips exactly when it has lasted, never before; each level is reported once
until the current falls below half of it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.reconciler import (
    CurrentLimits,
    CurrentWatch,
    OutletMemory,
    Report,
    Switch,
    Watched,
    breaker_closed,
    watch_current,
)
from schemas.messages import EdgeEventKind

pytestmark = pytest.mark.pure

LIMITS = CurrentLimits(overcurrent_a=20.0, overcurrent_s=5.0, levels_a=(1.0, 2.0, 4.0, 10.0))
MEMORY = OutletMemory(outlet=3, applied_generation=7, on=True, charge_id="c1", stop_at=None)

# (seconds since the previous sample, current, breaker on)
samples = st.lists(
    st.tuples(
        st.floats(0.1, 3.0),
        st.sampled_from([0.0, 0.4, 1.5, 3.0, 12.0, 19.9, 20.0, 20.1, 26.0]),
        st.booleans(),
    ),
    max_size=60,
)


def run(steps: list[tuple[float, float, bool]]) -> list[tuple[float, float, bool, Watched]]:
    """Feed the samples; each with what was decided."""
    watch, at = CurrentWatch(), 1000.0
    out: list[tuple[float, float, bool, Watched]] = []
    for gap, current, on in steps:
        at += gap
        seen = watch_current(MEMORY, watch, at=at, current_a=current, breaker_on=on, limits=LIMITS)
        watch = seen.watch
        out.append((at, current, on, seen))
    return out


def over(current: float, on: bool) -> bool:
    return current > LIMITS.overcurrent_a and on


@given(samples)
def test_a_trip_comes_only_after_the_limit_was_exceeded_for_the_whole_hold(
    steps: list[tuple[float, float, bool]],
) -> None:
    decided = run(steps)
    for i, (at, _current, _on, seen) in enumerate(decided):
        if seen.trip is None:
            continue
        # Walk back over this spell: every sample over the limit, the first ≥ hold ago.
        j = i
        while j > 0 and over(decided[j - 1][1], decided[j - 1][2]):
            j -= 1
        assert all(over(c, on) for _, c, on, _ in decided[j : i + 1])
        assert at - decided[j][0] >= LIMITS.overcurrent_s
        assert seen.trip.memory.on is False
        switch = seen.trip.actions[0]
        assert isinstance(switch, Switch) and switch.on is False


@given(samples)
def test_an_overcurrent_that_lasts_the_hold_always_trips(
    steps: list[tuple[float, float, bool]],
) -> None:
    decided = run(steps)
    spell_start = None
    tripped_in_spell = False
    for at, current, on, seen in decided:
        if not over(current, on):
            spell_start, tripped_in_spell = None, False
            continue
        spell_start = at if spell_start is None else spell_start
        tripped_in_spell |= seen.trip is not None
        if at - spell_start >= LIMITS.overcurrent_s:
            assert tripped_in_spell


def test_the_trip_names_the_current_and_the_limit() -> None:
    steps = [(1.0, 26.0, True)] * 7
    trips = [seen.trip for *_, seen in run(steps) if seen.trip is not None]
    assert len(trips) == 1  # counted again from the next sample
    report = trips[0].actions[-1]
    assert isinstance(report, Report)
    assert report.kind is EdgeEventKind.OVERCURRENT_TRIP
    assert report.detail == "26.0 A sustained above the 20.0 A limit"


def test_a_rise_is_reported_once_per_level_until_the_current_falls_below_half() -> None:
    currents = [0.0, 1.5, 1.6, 4.5, 4.4, 1.9, 0.4, 3.0, 12.0, 12.0]
    steps = [(1.0, c, True) for c in currents]
    reported = [seen.crossed_a for *_, seen in run(steps)]
    # 1.5 rises through 1; 4.5 through 2 and 4 (the highest is named); 1.9 keeps 1 and 2
    # (not below half) but drops 4; 0.4 drops 1 and 2; 3.0 crosses 1 and 2 again; 12 crosses
    # 4 and 10.
    assert reported == [None, 1.0, None, 4.0, None, None, None, 2.0, 10.0, None]


def test_a_closed_breaker_forgets_the_levels() -> None:
    seen = watch_current(
        MEMORY, CurrentWatch(), at=1.0, current_a=5.0, breaker_on=True, limits=LIMITS
    )
    again = watch_current(MEMORY, seen.watch, at=2.0, current_a=5.0, breaker_on=True, limits=LIMITS)
    assert (seen.crossed_a, again.crossed_a) == (4.0, None)
    closed = breaker_closed(seen.watch)
    assert (
        watch_current(
            MEMORY, closed, at=3.0, current_a=5.0, breaker_on=True, limits=LIMITS
        ).crossed_a
        == 4.0
    )

"""Current-rise detection: hysteresis, time order, one rise per crossing."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charging.current_rise import RELEASE, RiseState, observe, observe_all

pytestmark = pytest.mark.pure

THRESHOLD = 6.0


def rises(observations: list[tuple[float, float]]) -> list[float]:
    """The times at which a rise fires, feeding (at, current) in the given order."""
    state, fired = RiseState(), []
    for at, current in observations:
        state, rose = observe(state, at=at, current_a=current, threshold_a=THRESHOLD)
        if rose:
            fired.append(at)
    return fired


def test_a_car_that_starts_drawing_fires_once() -> None:
    assert rises([(0, 0.0), (5, 0.4), (10, 15.9), (60, 16.0), (120, 15.8)]) == [10]


def test_hovering_at_the_threshold_does_not_fire_again() -> None:
    wobble = [(t, THRESHOLD + (0.3 if t % 2 else -0.3)) for t in range(1, 40)]
    assert rises(wobble) == [1]


def test_the_outlet_rearms_after_the_current_drops() -> None:
    obs = [(1, 16.0), (60, 2.0), (120, 16.0)]  # fell below half the threshold, then rose again
    assert rises(obs) == [1, 120]


def test_the_edge_event_and_the_later_minute_reading_make_one_rise() -> None:
    # The edge reports the crossing at t=15 s; the minute batch for t=60 comes later,
    # then a backlog batch for t=0 (before the car drew anything) arrives last.
    assert rises([(15, 15.2), (60, 15.9), (0, 0.0), (15, 15.2)]) == [15]


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 32)), max_size=60))
def test_duplicates_never_add_rises(observations: list[tuple[int, float]]) -> None:
    once = rises([(float(t), c) for t, c in observations])
    twice = rises([(float(t), c) for t, c in observations for _ in range(2)])
    assert once == twice


@given(st.lists(st.floats(0, 32), max_size=60))
def test_each_rise_follows_a_release(currents: list[float]) -> None:
    fired = rises([(float(t), c) for t, c in enumerate(currents)])
    for earlier, later in itertools.pairwise(fired):
        between = currents[int(earlier) + 1 : int(later)]
        assert any(c < THRESHOLD * RELEASE for c in between)


@given(st.lists(st.tuples(st.integers(0, 50), st.floats(0, 32)), max_size=60))
def test_observing_a_whole_write_at_once_is_observing_each(
    observations: list[tuple[int, float]],
) -> None:
    """Ingest hands an outlet's observations from one write to ``observe_all``: the state
    and the rises are those of ``observe``, one observation at a time."""
    state, fired = RiseState(), []
    for at, current in observations:
        state, rose = observe(state, at=at, current_a=current, threshold_a=THRESHOLD)
        if rose:
            fired.append((at, current))
    assert observe_all(RiseState(), observations, threshold_a=THRESHOLD) == (state, fired)

"""Detecting that a car really draws power: an outlet's current crossing its threshold.

Pure: ``observe(state, at=…, current_a=…, threshold_a=…) → (state, rose)``. Observations
come from two places, whichever arrives first: the edge's immediate ``current_crossed``
event (seconds) and the minute batches (up to a minute later, or much later after an
outage). So:

* **Hysteresis.** A rise fires when the current reaches ``threshold_a``; the outlet is
  armed again only once the current falls below ``threshold_a × RELEASE`` (a car hovering
  at the threshold does not fire again and again).
* **Time order, not arrival order.** An observation older than the newest one seen is
  ignored, so a minute reading that arrives after the edge's event for a later moment, or
  any duplicate, changes nothing: one crossing, one rise.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: The outlet re-arms below this fraction of its threshold.
RELEASE = 0.5


@dataclass(frozen=True, slots=True)
class RiseState:
    high: bool = False
    seen_at: float = float("-inf")  # time of the newest observation used


def observe(
    state: RiseState, *, at: float, current_a: float, threshold_a: float
) -> tuple[RiseState, bool]:
    """One observation: the new state, and whether the current rose."""
    state, rises = observe_all(state, [(at, current_a)], threshold_a=threshold_a)
    return state, bool(rises)


def observe_all(
    state: RiseState, observations: Iterable[tuple[float, float]], *, threshold_a: float
) -> tuple[RiseState, list[tuple[float, float]]]:
    """Observations ``(at, current_a)`` in the order they are handed over (ingest sorts
    a write's by time): the new state and the rises, ``(at, current_a)`` each."""
    high, seen_at = state.high, state.seen_at
    release_a = threshold_a * RELEASE
    rises: list[tuple[float, float]] = []
    for at, current_a in observations:
        if at <= seen_at:
            continue  # a duplicate, or older than what we know
        seen_at = at
        if not high and current_a >= threshold_a:
            high = True
            rises.append((at, current_a))
        elif high and current_a < release_a:
            high = False
    return RiseState(high, seen_at), rises

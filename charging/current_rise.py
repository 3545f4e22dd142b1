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
    if at <= state.seen_at:
        return state, False  # a duplicate, or older than what we know
    if not state.high and current_a >= threshold_a:
        return RiseState(True, at), True
    if state.high and current_a < threshold_a * RELEASE:
        return RiseState(False, at), False
    return RiseState(state.high, at), False

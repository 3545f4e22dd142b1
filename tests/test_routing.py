"""Routing one write to the open charges, and the plan ingest writes from it (pure)."""

from __future__ import annotations

import datetime as dt

import pytest

from charging.lifecycle import State
from ingest import routing
from ingest.triage import Pending

pytestmark = pytest.mark.pure

T0 = 1_800_000_000.0
END = dt.datetime.fromtimestamp(T0 + 3600, dt.UTC)


def _row(charge_id: str, state: str, outlet: int) -> tuple[object, ...]:
    """A charge's row as ``charges.read_unlocked`` reads it: started at T0 with the meter
    at 1,000 Wh, and drawing current already if ``state`` says so."""
    rise = T0 if state == "drawing" else None
    return (
        charge_id, state, 1, None, T0, rise, None, None, None,
        T0, 1000.0, T0, 1000.0, 0.0, False,
        "client", f"ctl-a-{outlet}", END, f"p-{charge_id}", "7",
    )  # fmt: skip


def _pending(minutes: int) -> Pending:
    pending = Pending()
    for m in range(1, minutes + 1):
        minute = dt.datetime.fromtimestamp(T0 + 60 * m, dt.UTC)
        for outlet in (1, 2):
            pending.outlet_rows.append(
                ("ctl-a", outlet, minute, 1000.0 + 100 * m, 230.0, 16.0, True, None, None)
            )
        pending.batch_rows.append(("ctl-a", m, 1, minute, minute))
    return pending


OPEN = {("ctl-a", 1): (["on-1"], 6.0), ("ctl-a", 2): (["drawing-2"], 6.0)}
ROWS = [_row("on-1", "on", 1), _row("drawing-2", "drawing", 2)]


def test_a_plan_counts_every_charge_and_watches_only_outlets_awaiting_a_rise() -> None:
    """Both charges count the write's three minutes; only the outlet whose charge is still
    ``on`` has its current observed for a rise (a drawing charge has had its rise)."""
    plan = routing.plan(_pending(3), OPEN, ROWS)
    assert {cid: done.after.energy_wh for cid, done in plan.stepped.items()} == {
        "on-1": 300.0,
        "drawing-2": 300.0,
    }
    assert list(plan.watched) == [("ctl-a", 1)]
    assert [at for at, _ in plan.watched[("ctl-a", 1)]] == [T0 + 60, T0 + 120, T0 + 180]


def test_a_rise_steps_its_outlets_charges_again_and_leaves_the_others() -> None:
    """A rise found by the detector is one more input, in time order, for its outlet's
    charges only: they are stepped again from their rows, and the count is the same."""
    plan = routing.plan(_pending(3), OPEN, ROWS)
    feed, stepped = routing.with_rises(plan, {("ctl-a", 1): [(T0 + 90, 16.0)]})
    rose = stepped["on-1"]
    assert rose.after.state is State.DRAWING
    assert rose.after.rise_at == T0 + 90
    assert rose.after.energy_wh == 300.0
    assert [n.kind for n in rose.notices] == ["charge.current_rise"]
    assert [type(e).__name__ for e in feed["on-1"]] == [
        "MinuteReading",
        "CurrentRose",
        "MinuteReading",
        "MinuteReading",
    ]
    assert stepped["drawing-2"] is plan.stepped["drawing-2"]

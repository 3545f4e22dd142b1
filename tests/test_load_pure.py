"""Site load management's pure parts: the cloud allocator (properties over arbitrary sites),
the edge's budget rules, the charge lifecycle's queued and paused states, and the trace
replay's cap safety."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench import load_management as bench
from charging import allocation, lifecycle
from charging.allocation import ControllerView, OutletView, Settings, Track
from edge_agent import budget
from edge_agent.budget import BudgetMemory, OutletNow
from schemas.codec import decode, encode
from schemas.messages import Budget, CommandOutcome, LoadReport, OutletLoad
from schemas.topics import TopicKind

pytestmark = pytest.mark.pure

T0 = 1_800_000_000.0


# --- the allocator ----------------------------------------------------------------------
outlet_views = st.lists(
    st.tuples(
        st.booleans(),  # wants
        st.booleans(),  # running
        st.floats(0, 32),  # current
        st.sampled_from([10.0, 16.0, 32.0]),  # max
    ),
    min_size=1,
    max_size=8,
)
sites = st.lists(st.tuples(outlet_views, st.booleans()), min_size=1, max_size=5)


def _views(site: list[tuple[list[tuple[bool, bool, float, float]], bool]], now: float) -> dict:
    views = {}
    for i, (outlets, modulating) in enumerate(site):
        cid = f"c{i}"
        views[cid] = ControllerView(
            cid,
            now,
            modulating,
            20.0,
            tuple(
                OutletView(
                    n + 1, w, r and w, min(c, m) if r else 0.0, m, f"{cid}-{n}" if w else None
                )
                for n, (w, r, c, m) in enumerate(outlets)
            ),
        )
    return views


@settings(max_examples=300, deadline=None)
@given(sites, st.floats(0, 400), st.floats(0, 200))
def test_no_allocation_exceeds_the_room_the_cap_leaves(site, cap, building) -> None:
    s = Settings()
    got = allocation.allocate(
        now=T0, cap_a=cap, building_a=building, controllers=_views(site, T0), tracks={}, settings=s
    )
    room = cap - building - s.headroom_a
    assert sum(got.given.values()) <= max(0.0, room) + 1e-6
    assert sum(amps for amps, _o, _a in got.budgets.values()) <= max(0.0, room) + 0.1
    spare = max(0.0, room - sum(got.given.values())) / max(1, len(got.budgets))
    for cid, (amps, order, admit) in got.budgets.items():
        # What its admitted outlets were given, and an equal part of the room left over.
        given = sum(got.given.get((cid, n), 0.0) for n in order[:admit])
        assert amps == pytest.approx(given + spare, abs=0.1)
        assert all(got.given.get((cid, n), 0.0) == 0 for n in order[admit:])


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 24), st.floats(40, 160))
def test_every_waiting_charge_is_eventually_served_with_minimum_times_kept(n, room) -> None:
    """n cars that never fill up, on on/off outlets, share ``room``: each gets current
    within a bounded time, no breaker is held on less than min on or off less than min off
    by the allocator, and no outlet switches more than its budget in any hour."""
    s = Settings()
    cids = [f"c{i}" for i in range((n + 7) // 8)]
    keys = sorted((cid, k) for cid in cids for k in range(1, 9))[:n]
    running: dict[tuple[str, int], bool] = dict.fromkeys(keys, False)
    first: dict[tuple[str, int], float] = {}
    changes: dict[tuple[str, int], list[float]] = {k: [] for k in keys}
    tracks: dict = {}
    for step in range(0, 4 * 3600, int(s.period_s)):
        now = T0 + step
        views = {
            cid: ControllerView(
                cid,
                now,
                False,
                0.0,
                tuple(
                    OutletView(
                        k,
                        True,
                        running[(cid, k)],
                        16.0 if running[(cid, k)] else 0.0,
                        16.0,
                        f"{cid}{k}",
                    )
                    for (c, k) in keys
                    if c == cid
                ),
            )
            for cid in cids
        }
        got = allocation.allocate(
            now=now,
            cap_a=room + s.headroom_a,
            building_a=0,
            controllers=views,
            tracks=tracks,
            settings=s,
        )
        tracks = got.tracks
        assert sum(got.given.values()) <= room + 1e-6
        for key in keys:
            on = got.given.get(key, 0.0) > 0
            if on != running[key]:
                changes[key].append(now)
                running[key] = on
            if on:
                first.setdefault(key, now)
    slots = int((room - s.start_reserve_a) // 16)  # every start keeps its reserve
    if slots == 0:
        assert not first
        return
    assert set(first) == set(keys)  # everyone was served
    # Everyone within a round of turns: n / slots turns of turn_s each, plus a period.
    bound = (n / slots + 1) * s.turn_s + s.period_s
    assert max(first.values()) - T0 <= bound
    for times in changes.values():
        spells = [b - a for a, b in itertools.pairwise(times)]
        # Alternating on/off spells starting with an on spell.
        assert all(x >= s.min_on_s for x in spells[0::2])
        assert all(x >= s.min_off_s for x in spells[1::2])
        for i, t in enumerate(times):
            assert sum(1 for u in times[i:] if u - t < 3600) <= s.switches_per_hour


def test_least_received_charges_first_then_longest_waiting() -> None:
    s = Settings()
    views = {
        "c": ControllerView(
            "c",
            T0,
            False,
            0.0,
            (
                OutletView(1, True, False, 0.0, 16.0, "old"),
                OutletView(2, True, False, 0.0, 16.0, "new"),
                OutletView(3, True, False, 0.0, 16.0, "rich"),
            ),
        )
    }
    tracks = {
        ("c", 1): Track("old", since=T0 - 600, seen_at=T0),
        ("c", 2): Track("new", since=T0 - 60, seen_at=T0),
        ("c", 3): Track("rich", since=T0 - 900, received_ah=10.0, seen_at=T0),
    }
    got = allocation.allocate(
        now=T0,
        cap_a=16 + s.headroom_a + s.start_reserve_a,
        building_a=0,
        controllers=views,
        tracks=tracks,
        settings=s,
    )
    assert got.given[("c", 1)] == 16.0 and got.given[("c", 2)] == 0 and got.given[("c", 3)] == 0
    amps, order, admit = got.budgets["c"]
    # 16 A for "old", and the 4 A nobody could use (a start needs its reserve) as spare.
    assert (amps, order[:admit], order) == (16.0 + s.start_reserve_a, (1,), (1, 2, 3))
    # Estimates: the next turn goes to "new", then "rich".
    assert got.estimates["new"] == T0 + s.turn_s
    assert got.estimates["rich"] == T0 + 2 * s.turn_s


def test_an_unheard_controller_is_counted_at_its_safe_share() -> None:
    views = _views([([(True, False, 0.0, 16.0)], False)], T0)
    views["gone"] = ControllerView("gone", T0 - 60, False, 30.0, ())
    s = Settings()
    got = allocation.allocate(
        now=T0, cap_a=40 + s.headroom_a, building_a=0, controllers=views, tracks={}, settings=s
    )
    assert got.room_a == 10.0 and got.given[("c0", 1)] == 0.0 and "gone" not in got.budgets


def test_safe_shares_leave_the_building_its_peak() -> None:
    shares = allocation.safe_shares(200, 80, {"a": None, "b": 20.0, "c": None})
    assert shares == {"a": 50.0, "b": 20.0, "c": 50.0}
    assert sum(shares.values()) + 80 <= 200


# --- the edge's budget ------------------------------------------------------------------
def _budget(version: int, amps: float = 32.0, *, issued: float = T0, ttl: float = 10.0) -> Budget:
    return Budget("c", version, amps, (2, 1, 3), 1, issued, issued + ttl, 16.0)


def test_a_budget_applies_once_and_only_while_fresh() -> None:
    m = budget.received(BudgetMemory(), _budget(3), cloud_now=T0 + 1, max_age_s=120)
    assert m is not None and m.amps == 32.0 and m.until == T0 + 10
    assert budget.limit(m, cloud_now=T0 + 5, safe_share_a=None).amps == 32.0
    # Expired: the safe share the budget carried.
    assert budget.limit(m, cloud_now=T0 + 10, safe_share_a=None).amps == 16.0
    # Replayed or stale: nothing changes.
    assert budget.received(m, _budget(3, 99.0), cloud_now=T0 + 2, max_age_s=120) == m
    assert budget.received(m, _budget(2, 99.0), cloud_now=T0 + 2, max_age_s=120) == m
    # Unknown cloud clock: it waits to be judged.
    assert budget.received(m, _budget(4), cloud_now=None, max_age_s=120) is None
    # Issued long ago: only its safe share and order are learned.
    late = budget.received(m, _budget(5, issued=T0 - 500, ttl=1000), cloud_now=T0, max_age_s=120)
    assert late is not None and late.amps is None and late.fallback_a == 16.0
    # Never longer than asked, counted from receipt, whatever the clock estimate says.
    skewed = budget.received(m, _budget(6, issued=T0 + 100), cloud_now=T0 + 50, max_age_s=120)
    assert skewed is not None and skewed.until == T0 + 60
    # No budget ever, no setting: no load management.
    assert budget.limit(BudgetMemory(), cloud_now=T0, safe_share_a=None).amps is None
    assert budget.limit(BudgetMemory(), cloud_now=T0, safe_share_a=12.0).amps == 12.0


def _o(
    n: int,
    *,
    running: bool,
    held: bool = False,
    current: float = 16.0,
    since: float | None = T0 - 600,
) -> OutletNow:
    return OutletNow(n, True, running, held, current if running else 0.0, 16.0, since)


def test_the_edge_sheds_in_order_and_resumes_what_fits() -> None:
    outlets = [_o(1, running=True), _o(2, running=True), _o(3, running=False, held=True)]
    # 20 A for three 16 A outlets, order 2, 1, 3: outlet 1 is shed, 3 waits.
    p = budget.plan(outlets, limit_a=20.0, order=(2, 1, 3), now=T0, min_off_s=120)
    assert p.pause == (1,) and p.resume == ()
    # Room for all three: 3 resumes, unless it opened less than min_off ago.
    p = budget.plan(outlets, limit_a=48.0, order=(2, 1, 3), now=T0, min_off_s=120)
    assert p == budget.Plan((), (3,))
    rested = [*outlets[:2], _o(3, running=False, held=True, since=T0 - 30)]
    assert budget.plan(rested, limit_a=48.0, order=(), now=T0, min_off_s=120).resume == ()
    # A valid budget admits only the outlets chosen (the first ``admit`` of the order).
    p = budget.plan(outlets, limit_a=48.0, order=(3, 2, 1), admit=2, now=T0, min_off_s=120)
    assert p == budget.Plan((1,), (3,))
    # A charge the allocator has not seen yet (not in the order) starts if it fits the spare.
    new = [_o(1, running=True), _o(4, running=False, held=True)]
    assert budget.plan(new, limit_a=34.0, order=(1,), admit=1, now=T0, min_off_s=120).resume == (4,)
    assert budget.plan(new, limit_a=30.0, order=(1,), admit=1, now=T0, min_off_s=120).resume == ()
    # A failed breaker (wanting, neither running nor held) is left alone.
    failed = [OutletNow(1, True, False, False, 0.0, 16.0, None)]
    assert budget.plan(failed, limit_a=None, order=(), now=T0, min_off_s=0) == budget.Plan()


def test_a_station_is_turned_down_not_switched_off() -> None:
    outlets = [_o(1, running=True), _o(2, running=True), _o(3, running=True)]
    assert budget.shares(outlets, limit_a=40.0, order=(3, 1, 2), min_a=6.0) == {
        3: 16.0,
        1: 16.0,
        2: 8.0,
    }
    assert budget.shares(outlets, limit_a=14.0, order=(3, 1, 2), min_a=6.0) == {
        3: 8.0,
        1: 6.0,
        2: 0.0,
    }


def test_budgets_and_load_reports_travel_as_wire_version_2() -> None:
    b = _budget(1)
    raw = encode(b)
    assert msgpack.unpackb(raw)[0] == 2 and decode(TopicKind.BUDGET, raw) == b
    report = LoadReport("c", T0, 1, False, None, (OutletLoad(1, 15.9, True, True, 16.0, "x"),))
    assert decode(TopicKind.LOAD, encode(report)) == report


# --- the lifecycle ----------------------------------------------------------------------
def test_a_queued_charge_starts_when_resumed_and_a_paused_one_resumes() -> None:
    c = lifecycle.start("x", 4)
    c, notes = lifecycle.step(c, lifecycle.Acked(4, CommandOutcome.QUEUED, False, T0))
    assert c.state is lifecycle.State.QUEUED and [n.kind for n in notes] == ["charge.paused"]
    # A queued charge never times out.
    assert lifecycle.step(c, lifecycle.StartTimedOut(T0 + 999))[0].state is lifecycle.State.QUEUED
    c, notes = lifecycle.step(c, lifecycle.Resumed(T0 + 60, 1000.0))
    assert c.state is lifecycle.State.ON and c.started_at == T0 + 60
    assert [n.kind for n in notes] == ["charge.started"]
    c, _ = lifecycle.step(c, lifecycle.CurrentRose(T0 + 62, 15.0))
    c, notes = lifecycle.step(c, lifecycle.Paused("site capacity", T0 + 900))
    assert c.state is lifecycle.State.PAUSED and notes[0].detail == "site capacity"
    c, notes = lifecycle.step(c, lifecycle.Resumed(T0 + 1200, 1900.0))
    assert c.state is lifecycle.State.DRAWING and [n.kind for n in notes] == ["charge.resumed"]
    c, _ = lifecycle.step(c, lifecycle.Paused("site capacity", T0 + 1500))
    c, _ = lifecycle.step(c, lifecycle.StopRequested(5, "partner stopped", T0 + 1600))
    assert c.state is lifecycle.State.STOPPING
    c, notes = lifecycle.step(
        c, lifecycle.Acked(5, CommandOutcome.APPLIED, False, T0 + 1601, 2500.0)
    )
    assert c.state is lifecycle.State.STOPPED and c.energy_wh == pytest.approx(1500.0)


def test_a_queued_charge_whose_time_ends_fails_and_a_stopped_one_too() -> None:
    q, _ = lifecycle.step(
        lifecycle.start("x", 4), lifecycle.Acked(4, CommandOutcome.QUEUED, False, T0)
    )
    ended, notes = lifecycle.step(q, lifecycle.BreakerOpened("end_at reached", T0 + 5))
    assert ended.state is lifecycle.State.FAILED and notes[0].kind == "charge.failed"
    stopped, _ = lifecycle.step(q, lifecycle.StopRequested(5, "partner stopped", T0 + 5))
    assert stopped.state is lifecycle.State.FAILED


# --- the trace replay -------------------------------------------------------------------
def test_the_trace_replay_never_exceeds_the_cap_and_falls_back_within_two_periods() -> None:
    trace = bench.make_trace(2026, quick=True)
    s = Settings()
    fcfs = bench.replay(trace, "fcfs", s)
    assert fcfs["peak_demand_over_cap"] >= 2.0  # the evening asks twice the cap
    assert fcfs["above_cap_s"] > 0  # what the allocator prevents
    ours = bench.replay(trace, "chargeline", s)
    assert ours["above_cap_s"] == 0
    assert ours["utilisation_pct"] >= 90
    assert ours["longest_wait_min"] <= 30
    assert ours["most_switches_in_an_hour"] <= s.switches_per_hour
    assert ours["shortest_on_min"] * 60 >= s.min_on_s
    assert ours["shortest_off_min"] * 60 >= s.min_off_s
    outage = bench.replay(trace, "outage", s)
    assert outage["above_cap_s"] == 0
    assert outage["fallback_s"] is not None and outage["fallback_s"] <= 2 * s.period_s

"""Dividing a site's cap among its charges: the cloud allocator, pure.

Every ``period_s`` the site's allocator (``load_manager``, one running instance per site)
calls ``allocate`` with the site's cap, the building's own load, what each controller
reported last (``LoadReport``) and what it remembered from the period before (``Track`` per
outlet). It returns a ``Budget`` per controller (amps and an order) and, per waiting
charge, an estimate of when it will get current. The edges enforce the budgets every second
(``edge_agent.budget``); this module decides who charges.

Theory of operation
-------------------
*Room.* ``room = cap − building − headroom_a − what the unheard controllers may draw``. The
headroom covers what the building can add between two periods; a controller not heard from
for ``stale_s`` is assumed to draw its safe share (its budget has expired by then, so it
keeps to that share on its own).

*Who must keep running, who may not start.* A running charge keeps its place for
``turn_s`` (at least ``min_on_s``): relays are not switched for small gains. One whose
breaker opened less than ``min_off_s`` ago may not start again. An outlet that has used its
``switches_per_hour`` (counted over the last hour) stays as it is. These are commitments,
not preferences; only the cap overrides them: when the committed charges alone no longer
fit (the cap was lowered, the building rose), the ones that received most are paused first.

*Who charges next.* Every other charge wanting current competes for what is left (a charge
that would start needs ``start_reserve_a`` to spare as well: the building may rise before
its minimum on time is over), in order
of least energy received so far (as amp-hours the allocator integrated from the reports),
then longest waiting. A charge past its turn therefore yields to one that received less,
and a new arrival (nothing received) comes first once a turn ends. An on/off outlet needs
its rating; a station's connector (``modulating``) may run anywhere between
``min_station_a`` and its rating, and is given the rest of the room after every outlet that
fits has its full rating, so the room is used to the last ampere.

*What each controller gets.* Its budget is the sum of what its running outlets were given
(a running outlet is given what it draws plus ``margin_a``, or its rating while it ramps
up), plus an equal part of the room nobody could use (so that a charge starting between two
periods may start at once when it fits; the room the resting charges will want once rested
is not spare); its order lists its running outlets first, by
priority, then its waiting ones, and it admits the running ones (the waiting ones wait for
their turn; an outlet the allocator has not seen yet may use the spare). The budget expires
after ``expiry_s`` (two periods by default): if the allocator stops, every controller falls
back to its safe share within two periods.

*Estimates.* A waiting charge's start is estimated by handing out, in priority order, the
moments at which the running on/off outlets end their turn (a slot is handed out again one
``turn_s`` later). It is an estimate: cars that finish early free room sooner.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class Settings:
    period_s: float = 5.0
    expiry_s: float = 10.0
    headroom_a: float = 4.0
    #: A charge starts (or resumes) only with this much room to spare as well, so that the
    #: building's rise over a minimum on time does not pause it before its turn ends.
    start_reserve_a: float = 4.0
    margin_a: float = 1.0
    ramp_s: float = 60.0
    min_on_s: float = 300.0
    min_off_s: float = 120.0
    turn_s: float = 900.0
    switches_per_hour: int = 4
    min_station_a: float = 6.0
    stale_s: float = 15.0


@dataclass(frozen=True, slots=True)
class OutletView:
    """One outlet as its controller last reported it."""

    outlet: int
    wants: bool
    running: bool
    current_a: float
    max_a: float
    charge_id: str | None


@dataclass(frozen=True, slots=True)
class ControllerView:
    controller_id: str
    #: Cloud time of its last report (None: never heard).
    heard_at: float | None
    modulating: bool
    fallback_a: float
    outlets: tuple[OutletView, ...] = ()


@dataclass(frozen=True, slots=True)
class Track:
    """What the allocator remembers of one outlet's charge."""

    charge_id: str | None
    #: When the charge first wanted current.
    since: float
    received_ah: float = 0.0
    #: When it first got current (None: not yet).
    first_at: float | None = None
    #: What the allocator last gave it (0: held off), and since when.
    given_a: float = 0.0
    changed_at: float | None = None
    #: Allocator switches (start, pause, resume) within the last hour.
    switches: tuple[float, ...] = ()
    seen_at: float | None = None


Key = tuple[str, int]


@dataclass(frozen=True, slots=True)
class Allocation:
    #: Per controller: amps, the order of its outlets, and how many of them may charge.
    budgets: dict[str, tuple[float, tuple[int, ...], int]]
    #: Per outlet: what it was given (0: it waits).
    given: dict[Key, float]
    tracks: dict[Key, Track]
    #: Per waiting charge id: when it should get current (None: no estimate).
    estimates: dict[str, float | None]
    room_a: float
    #: Charges held off (waiting for their first current, or paused).
    waiting: int = 0
    notes: tuple[str, ...] = field(default=())


Item = tuple[Key, OutletView, bool]  # an outlet wanting current, and whether it modulates


def allocate(
    *,
    now: float,
    cap_a: float,
    building_a: float,
    controllers: Mapping[str, ControllerView],
    tracks: Mapping[Key, Track],
    settings: Settings = Settings(),
) -> Allocation:
    s = settings
    fresh = {
        cid: v
        for cid, v in controllers.items()
        if v.heard_at is not None and now - v.heard_at <= s.stale_s
    }
    unheard = sum(v.fallback_a for cid, v in controllers.items() if cid not in fresh)
    room = cap_a - building_a - s.headroom_a - unheard
    kept = _tracks(now, fresh, tracks, max_dt=s.stale_s)
    wanting: list[Item] = sorted(
        (
            ((cid, o.outlet), o, view.modulating)
            for cid, view in fresh.items()
            for o in view.outlets
            if o.wants and o.charge_id is not None
        ),
        key=lambda item: (kept[item[0]].received_ah, kept[item[0]].since, item[0]),
    )
    committed, free, given = _commitments(now, wanting, kept, s)
    notes = _fill(now, committed=committed, free=free, given=given, kept=kept, room=room, s=s)
    # What nobody can use now, less what the resting charges will want once rested: a
    # charge the edge starts from the spare must not take their place.
    resting = sum(
        o.max_a if not mod else min(s.min_station_a, o.max_a)
        for key, o, mod in wanting
        if key not in {c[0] for c in committed + free} and not _worn(kept[key], now, s)
    )
    spare = room - sum(given.values()) - resting
    out_tracks = dict(kept)
    for key, _o, _mod in wanting:
        t = kept[key]
        amps = given.get(key, 0.0)
        if (amps > 0) != (t.given_a > 0):
            switches = (*(x for x in t.switches if now - x < HOUR_S), now)
            t = replace(t, changed_at=now, switches=switches)
        out_tracks[key] = replace(t, given_a=amps)
    return Allocation(
        _budgets(fresh, wanting, given, spare),
        given,
        out_tracks,
        _estimates(now, wanting, given, out_tracks, s),
        room,
        sum(1 for key, _o, _m in wanting if given.get(key, 0.0) <= 0),
        tuple(notes),
    )


def _worn(t: Track, now: float, s: Settings) -> bool:
    """The outlet has used its switches for the last hour."""
    return sum(1 for x in t.switches if now - x < HOUR_S) >= s.switches_per_hour


def _commitments(
    now: float, wanting: list[Item], kept: Mapping[Key, Track], s: Settings
) -> tuple[list[Item], list[Item], dict[Key, float]]:
    """Split the wanting outlets: running ones that keep their place (their turn has not
    ended, or they are out of switches), resting ones that may not start (given 0), and the
    free rest, each list still in priority order."""
    committed: list[Item] = []
    free: list[Item] = []
    given: dict[Key, float] = {}
    for item in wanting:
        t = kept[item[0]]
        on = t.given_a > 0
        since_change = None if t.changed_at is None else now - t.changed_at
        worn = _worn(t, now, s)
        in_turn = since_change is not None and since_change < max(s.min_on_s, s.turn_s)
        if on and (worn or in_turn):
            committed.append(item)
        elif not on and since_change is not None and (worn or since_change < s.min_off_s):
            given[item[0]] = 0.0
        else:
            free.append(item)
    return committed, free, given


def _fill(
    now: float,
    *,
    committed: list[Item],
    free: list[Item],
    given: dict[Key, float],
    kept: Mapping[Key, Track],
    room: float,
    s: Settings,
) -> list[str]:
    """Hand out ``room``: the committed charges first (the cap pauses those that no longer
    fit, most received first), then the free ones in priority order, then what is left to
    the running stations' connectors, up to their rating."""

    def need(item: Item) -> float:
        key, o, modulating = item
        t = kept[key]
        if modulating:
            return min(s.min_station_a, o.max_a)
        ramping = t.given_a <= 0 or t.changed_at is None or now - t.changed_at < s.ramp_s
        return o.max_a if ramping or not o.running else min(o.max_a, o.current_a + s.margin_a)

    notes: list[str] = []
    used = 0.0
    for item in committed + free:
        amps = need(item)
        starting = kept[item[0]].given_a <= 0
        if used + amps <= room - (s.start_reserve_a if starting else 0.0):
            given[item[0]] = amps
            used += amps
        else:
            given[item[0]] = 0.0
            if item in committed:
                notes.append(f"{item[0][0]}/{item[0][1]} paused before its turn ended: cap")
    for key, o, modulating in committed + free:
        if modulating and given[key] > 0 and room - used > 0:
            extra = min(o.max_a - given[key], room - used)
            given[key] += extra
            used += extra
    return notes


def _budgets(
    fresh: Mapping[str, ControllerView],
    wanting: list[Item],
    given: Mapping[Key, float],
    spare_a: float,
) -> dict[str, tuple[float, tuple[int, ...], int]]:
    """Each controller's amps, order and admitted count. The room nobody could use is split
    equally among the controllers as spare: a charge that starts before the next period
    (one the allocator has not seen) may use it at once rather than wait a period."""
    budgets: dict[str, tuple[float, tuple[int, ...], int]] = {}
    spare = max(0.0, spare_a) / len(fresh) if fresh else 0.0
    for cid in fresh:
        mine = [key[1] for key, _o, _m in wanting if key[0] == cid]
        running = [n for n in mine if given.get((cid, n), 0.0) > 0]
        waiting = [n for n in mine if given.get((cid, n), 0.0) <= 0]
        amps = sum(given[(cid, n)] for n in running) + spare
        budgets[cid] = (math.floor(amps * 10) / 10, (*running, *waiting), len(running))
    return budgets


def _tracks(
    now: float, fresh: Mapping[str, ControllerView], tracks: Mapping[Key, Track], *, max_dt: float
) -> dict[Key, Track]:
    """The tracks of the charges reported now, with what they received since last time
    (at the current reported now, over at most ``max_dt``)."""
    kept: dict[Key, Track] = {}
    for cid, view in fresh.items():
        for o in view.outlets:
            key = (cid, o.outlet)
            if not o.wants or o.charge_id is None:
                continue
            t = tracks.get(key)
            if t is None or t.charge_id != o.charge_id:
                # A charge the edge started from its spare is on since now: in its turn.
                on = o.max_a if o.running else 0.0
                at = now if o.running else None
                switches = (now,) if o.running else ()
                kept[key] = Track(o.charge_id, now, 0.0, None, on, at, switches, now)
                continue
            dt = 0.0 if t.seen_at is None else max(0.0, min(now - t.seen_at, max_dt))
            got = t.received_ah + o.current_a * dt / HOUR_S
            first = t.first_at if t.first_at is not None or o.current_a < 1 else now
            kept[key] = replace(t, received_ah=got, seen_at=now, first_at=first)
    return kept


def _estimates(
    now: float,
    wanting: list[tuple[Key, OutletView, bool]],
    given: Mapping[Key, float],
    tracks: Mapping[Key, Track],
    s: Settings,
) -> dict[str, float | None]:
    slots = [
        max(now, (tracks[key].changed_at or now) + s.turn_s)
        for key, _o, modulating in wanting
        if given.get(key, 0.0) > 0 and not modulating
    ]
    heapq.heapify(slots)
    out: dict[str, float | None] = {}
    for key, o, _m in wanting:
        if given.get(key, 0.0) > 0 or o.charge_id is None:
            continue
        t = tracks[key]
        rested = now if t.changed_at is None else t.changed_at + s.min_off_s
        if not slots:
            out[o.charge_id] = None
            continue
        at = heapq.heappop(slots)
        out[o.charge_id] = max(at, rested)
        heapq.heappush(slots, at + s.turn_s)
    return out


def safe_shares(
    cap_a: float, building_peak_a: float, controllers: Mapping[str, float | None]
) -> dict[str, float]:
    """Each controller's static safe share: what it may draw with no budget. Written ones
    are kept; the rest split what the written ones leave of ``cap − building peak`` equally,
    so that every controller at its share, with the building at its peak, stays under the
    cap."""
    room = max(0.0, cap_a - building_peak_a)
    written = {cid: a for cid, a in controllers.items() if a is not None}
    others = [cid for cid, a in controllers.items() if a is None]
    left = max(0.0, room - sum(written.values()))
    each = round(left / len(others), 1) if others else 0.0
    return {**written, **{cid: each for cid in others}}

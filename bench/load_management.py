"""Site load management on a simulated day: chargeline's allocator against two baselines.

``python -m bench.load_management [--quick]``. A pure trace replay, one step per second: a
site with 40 outlets (four controllers of eight 16 A on/off outlets, and an OCPP station
whose eight connectors modulate up to 32 A), a building whose own load varies over the day,
and cars arriving with realistic energy needs, so that the evening peak asks about twice
the cap. The same seeded trace runs three ways in the same run:

* ``chargeline``: the cloud allocator (``charging.allocation``) every 5 s, the edges
  enforcing their budgets every second (``edge_agent.budget``);
* ``outage``: the same, with the cloud cut off at 19:30 for 15 minutes (the broker killed
  mid-peak): budgets expire, every controller falls back to its safe share;
* ``fcfs``: today's behaviour, every charge on as it asks (the seconds over the cap are the
  main breaker's trips);
* ``static``: every controller always at its static safe share, first come first served.

Figures per run: seconds above the cap (and the longest spell, the worst overshoot),
utilisation of the cap while demand exceeds it, the Jain index over the energy of charges
waiting at the same time (per hour of congestion), the longest wait for a first current,
relay switches per outlet-hour (mean, and the most in any one hour), the shortest on and
off spells, the fall-back time in the outage, and energy delivered. ``--quick`` replays
16:00–23:00 only.
"""

from __future__ import annotations

import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.common import emit, parser
from charging import allocation
from charging.allocation import ControllerView, OutletView
from edge_agent import budget as edge_budget
from schemas.messages import Budget

VOLTS = 230.0
DAY0 = 1_767_225_600.0  # 2026-01-01 00:00 UTC: the replay's midnight
ONOFF_A = 16.0
STATION_A = 32.0
CONTRACT_A = 280.0
MARGIN_A = 30.0
CAP_A = CONTRACT_A - MARGIN_A
#: The building's peak as the registry writes it (the safe shares are sized with it).
BUILDING_PEAK_A = 110.0
OUTAGE_AT_S = 19.5 * 3600
OUTAGE_S = 15 * 60.0


@dataclass
class Car:
    arrive: float
    leave: float
    need_wh: float
    max_a: float
    controller: str = ""
    outlet: int = 0
    got_wh: float = 0.0
    #: What it received while the site was congested (demand above the cap).
    shared_wh: float = 0.0
    first_at: float | None = None


@dataclass
class Trace:
    start: float
    end: float
    cars: list[Car]
    building: list[float]  # amps, one per second from ``start``


def building_load(rng: random.Random, start: float, end: float) -> list[float]:
    """A block of flats: ~30 A at night, a morning bump, ~100 A at 19:00, with slow noise."""
    out: list[float] = []
    wander = 0.0
    for t in range(int(start), int(end)):
        h = (t % 86400) / 3600
        base = (
            30
            + 20 * math.exp(-(((h - 7.5) / 1.2) ** 2))
            + 15 * math.exp(-(((h - 13) / 2.5) ** 2))
            + 70 * math.exp(-(((h - 19.2) / 1.8) ** 2))
        )
        wander = max(-6.0, min(6.0, wander + rng.uniform(-0.15, 0.15)))
        out.append(base + wander)
    return out


def make_trace(seed: int, *, quick: bool) -> Trace:
    rng = random.Random(seed)
    start, end = (16 * 3600.0, 23 * 3600.0) if quick else (0.0, 86400.0 + 6 * 3600)
    cars: list[Car] = []
    for _ in range(36):  # residents home in the evening, staying the night
        arrive = rng.gauss(18.6 * 3600, 1.1 * 3600)
        need = min(40_000.0, max(3_000.0, rng.lognormvariate(math.log(11_000), 0.5)))
        cars.append(Car(arrive, 86400 + rng.gauss(7.5 * 3600, 3600), need, 0))
    for _ in range(14):  # daytime visitors and shift workers
        arrive = rng.uniform(7 * 3600, 16 * 3600)
        need = min(30_000.0, max(2_000.0, rng.lognormvariate(math.log(7_000), 0.5)))
        cars.append(Car(arrive, arrive + rng.uniform(3, 8) * 3600, need, 0))
    cars.sort(key=lambda c: c.arrive)
    return Trace(start, end, cars, building_load(rng, start, end))


# --- the site -------------------------------------------------------------------------
CONTROLLERS = {"ctl-a": False, "ctl-b": False, "ctl-c": False, "ctl-d": False, "st-1": True}


@dataclass
class Outlet:
    controller: str
    n: int
    modulating: bool
    max_a: float
    car: Car | None = None
    wants: bool = False
    running: bool = False
    held: bool = False
    limit_a: float = 0.0  # a modulating connector's limit
    current_a: float = 0.0
    since: float | None = None
    switches: list[float] = field(default_factory=list)
    on_spells: list[float] = field(default_factory=list)
    off_spells: list[float] = field(default_factory=list)


def _draw(car: Car, max_a: float) -> float:
    """A car draws its limit, tapering over the last 10 % of its need; a full one nothing."""
    left = car.need_wh - car.got_wh
    if left <= 0:
        return 0.0
    amps = min(car.max_a, max_a)
    taper = left / (0.1 * car.need_wh)
    return amps * min(1.0, max(0.15, taper))


@dataclass
class Run:
    name: str
    above_s: int = 0
    longest_above_s: int = 0
    worst_over: float = 0.0
    trips: int = 0
    congested_s: int = 0
    used_in_congestion: float = 0.0
    fallback_s: float | None = None
    above_in_outage_s: int = 0
    over_spell: int = 0
    peak_demand: float = 0.0
    waits: list[float] = field(default_factory=list)
    jains: list[float] = field(default_factory=list)


class Replay:
    """One replay of a trace under one ``mode`` (chargeline, outage, fcfs, static)."""

    def __init__(self, trace: Trace, mode: str, settings: allocation.Settings) -> None:
        self.trace, self.mode, self.settings = trace, mode, settings
        self.rng = random.Random(7)
        self.cars = [Car(max(c.arrive, trace.start), c.leave, c.need_wh, 0) for c in trace.cars]
        self.outlets = [
            Outlet(cid, n, mod, STATION_A if mod else ONOFF_A)
            for cid, mod in CONTROLLERS.items()
            for n in range(1, 9)
        ]
        self.by_cid = {cid: [o for o in self.outlets if o.controller == cid] for cid in CONTROLLERS}
        self.shares = allocation.safe_shares(CAP_A, BUILDING_PEAK_A, dict.fromkeys(CONTROLLERS))
        self.memories = {cid: edge_budget.BudgetMemory() for cid in CONTROLLERS}
        self.arrived: dict[tuple[str, int], float] = {}
        self.tracks: dict[allocation.Key, allocation.Track] = {}
        self.version = 0
        self.run = Run(mode)
        self.pending = list(reversed(self.cars))
        self.outage = (OUTAGE_AT_S, OUTAGE_AT_S + OUTAGE_S) if mode == "outage" else None
        self.managed = mode in ("chargeline", "outage")
        self.idx = {id(c): i for i, c in enumerate(self.cars)}

    def figures(self) -> dict[str, Any]:
        trace = self.trace
        for step, t in enumerate(range(int(trace.start), int(trace.end))):
            now = float(t)
            self._cars(now)
            building = trace.building[step]
            cloud_up = self.outage is None or not (self.outage[0] <= now < self.outage[1])
            if self.managed and cloud_up and step % int(self.settings.period_s) == 0:
                self._allocate(now, building)
            fallen_back = self._edges(now)
            if not cloud_up and fallen_back and self.run.fallback_s is None:
                self.run.fallback_s = now - self.outage[0]  # type: ignore[index]
            total, demand = self._physics(now, building)
            self._count(total, demand, cloud_up)
            if step % 900 == 0 and demand > CAP_A:
                self._fairness(now)
        for o in self.outlets:
            if o.car is not None and o.car.first_at is None:
                self.run.waits.append(trace.end - o.car.arrive)
        return _figures(self.run, self.outlets, self.cars, trace)

    def _cars(self, now: float) -> None:
        """Cars arrive at a free outlet (at random) and leave."""
        while self.pending and self.pending[-1].arrive <= now:
            car = self.pending.pop()
            free = [o for o in self.outlets if o.car is None]
            if car.leave <= now or not free:
                continue
            o = self.rng.choice(free)
            car.max_a = ONOFF_A if not o.modulating else self.rng.choice((16.0, 32.0))
            o.car, o.wants, o.held = car, True, True
            self.arrived[(o.controller, o.n)] = now
        for o in self.outlets:
            if o.car is not None and o.car.leave <= now:
                if o.car.first_at is None:
                    self.run.waits.append(now - o.car.arrive)
                o.car, o.wants, o.running, o.held = None, False, False, False
                o.limit_a, o.current_a, o.since = 0.0, 0.0, None

    def _allocate(self, now: float, building: float) -> None:
        """The cloud allocator, every period, and the budgets it publishes."""
        views = {
            cid: ControllerView(
                cid,
                now,
                CONTROLLERS[cid],
                self.shares[cid],
                tuple(
                    OutletView(
                        o.n,
                        o.wants,
                        o.running,
                        o.current_a,
                        min(o.max_a, o.car.max_a) if o.car else o.max_a,
                        f"c{self.idx[id(o.car)]}" if o.car else None,
                    )
                    for o in self.by_cid[cid]
                ),
            )
            for cid in CONTROLLERS
        }
        result = allocation.allocate(
            now=now,
            cap_a=CAP_A,
            building_a=building,
            controllers=views,
            tracks=self.tracks,
            settings=self.settings,
        )
        self.tracks = result.tracks
        self.version += 1
        expires = now + self.settings.expiry_s
        for cid, (amps, order, admit) in result.budgets.items():
            b = Budget(cid, self.version, amps, order, admit, now, expires, self.shares[cid])
            got = edge_budget.received(self.memories[cid], b, cloud_now=now, max_age_s=120)
            if got is not None:
                self.memories[cid] = got

    def _edges(self, now: float) -> bool:
        """Each edge, every second; whether every one keeps to its safe share."""
        fallen_back = True
        for cid, mine in self.by_cid.items():
            admit: int | None = None
            if self.mode == "fcfs":
                lim: float | None = None
                order: tuple[int, ...] = ()
            elif self.mode == "static":
                lim = self.shares[cid]
                first = sorted(mine, key=lambda o: self.arrived.get((cid, o.n), math.inf))
                order = tuple(o.n for o in first)
            else:
                got = edge_budget.limit(self.memories[cid], cloud_now=now, safe_share_a=None)
                lim, order, admit = got.amps, got.order, got.admit
                fallen_back = fallen_back and lim == self.shares[cid]
            if CONTROLLERS[cid]:
                _modulate(mine, lim, order, admit, self.settings.min_station_a)
            else:
                _switch(mine, lim, order, admit, now=now, min_off=self.settings.min_off_s)
        return fallen_back

    def _physics(self, now: float, building: float) -> tuple[float, float]:
        """What every car draws this second: the site's current and its demand."""
        total = demand = building
        for o in self.outlets:
            car = o.car
            if car is None:
                o.current_a = 0.0
                continue
            cap = o.limit_a if o.modulating else (o.max_a if o.running else 0.0)
            o.current_a = _draw(car, cap) if (o.running and cap > 0) else 0.0
            demand += _draw(car, o.max_a)  # what it would draw, unconstrained
            if o.current_a > 0.5 and car.first_at is None:
                car.first_at = now
                self.run.waits.append(now - car.arrive)
            car.got_wh += o.current_a * VOLTS / 3600
            total += o.current_a
        return total, demand

    def _count(self, total: float, demand: float, cloud_up: bool) -> None:
        run = self.run
        if total > CAP_A + 1e-6:
            run.trips += run.over_spell == 0
            run.over_spell += 1
            run.above_s += 1
            run.longest_above_s = max(run.longest_above_s, run.over_spell)
            run.worst_over = max(run.worst_over, total / CAP_A - 1)
            run.above_in_outage_s += not cloud_up
        else:
            run.over_spell = 0
        run.peak_demand = max(run.peak_demand, demand)
        if demand > CAP_A:
            run.congested_s += 1
            run.used_in_congestion += min(total, CAP_A) / CAP_A

    def _fairness(self, now: float) -> None:
        """Every 15 minutes of congestion: the energy received so far by the charges that have
        waited side by side from the start, those that arrived in the same half hour (plugged
        in for an hour at least, not yet full; per group of three or more)."""
        cohorts: dict[int, list[float]] = {}
        for o in self.outlets:
            car = o.car
            if car is None or now - car.arrive < 3600 or car.got_wh >= car.need_wh * 0.95:
                continue
            cohorts.setdefault(int(car.arrive // 1800), []).append(car.got_wh)
        self.run.jains.extend(_jain(xs) for xs in cohorts.values() if len(xs) >= 3)


def replay(trace: Trace, mode: str, settings: allocation.Settings) -> dict[str, Any]:
    """Replay ``trace`` one second at a time under ``mode``: the figures."""
    return Replay(trace, mode, settings).figures()


def _switch(
    mine: list[Outlet],
    lim: float | None,
    order: tuple[int, ...],
    admit: int | None,
    *,
    now: float,
    min_off: float,
) -> None:
    views = [
        edge_budget.OutletNow(
            o.n, o.wants, o.running, o.held, o.current_a, o.car.max_a if o.car else o.max_a, o.since
        )
        for o in mine
    ]
    p = edge_budget.plan(views, limit_a=lim, order=order, now=now, min_off_s=min_off, admit=admit)
    by_n = {o.n: o for o in mine}
    for n in p.pause:
        o = by_n[n]
        o.on_spells.append(now - (o.since or now))
        o.running, o.held, o.since = False, True, now
        o.switches.append(now)
    for n in p.resume:
        o = by_n[n]
        if o.since is not None:
            o.off_spells.append(now - o.since)
        o.running, o.held, o.since = True, False, now
        o.switches.append(now)


def _modulate(
    mine: list[Outlet], lim: float | None, order: tuple[int, ...], admit: int | None, min_a: float
) -> None:
    views = [
        edge_budget.OutletNow(
            o.n, o.wants, o.running, o.held, o.current_a, o.car.max_a if o.car else o.max_a, o.since
        )
        for o in mine
    ]
    limits = edge_budget.shares(views, limit_a=lim, order=order, min_a=min_a, admit=admit)
    for o in mine:
        if not o.wants:
            continue
        o.limit_a = limits.get(o.n, 0.0)
        o.running, o.held = o.limit_a > 0, o.limit_a <= 0


def _figures(run: Run, outlets: list[Outlet], cars: list[Car], trace: Trace) -> dict[str, Any]:
    jains, waits = run.jains, run.waits
    relays = [o for o in outlets if not o.modulating]
    busy_h = sum(len([1 for _ in o.switches]) for o in relays)
    hours = (trace.end - trace.start) / 3600
    worst_hour = 0
    for o in relays:
        times = o.switches
        j = 0
        for i, t in enumerate(times):
            while times[j] <= t - 3600:
                j += 1
            worst_hour = max(worst_hour, i - j + 1)
    on_spells = [s for o in relays for s in o.on_spells]
    off_spells = [s for o in relays for s in o.off_spells]
    delivered = sum(min(c.got_wh, c.need_wh) for c in cars)
    needed = sum(c.need_wh for c in cars if c.arrive < trace.end and c.leave > trace.start)
    return {
        "peak_demand_over_cap": round(run.peak_demand / CAP_A, 2),
        "above_cap_s": run.above_s,
        "longest_above_cap_s": run.longest_above_s,
        "worst_over_cap_pct": round(100 * run.worst_over, 1),
        "over_cap_spells": run.trips,
        "utilisation_pct": round(100 * run.used_in_congestion / max(1, run.congested_s), 1),
        "congested_h": round(run.congested_s / 3600, 2),
        "jain_min": round(min(jains), 3) if jains else None,
        "jain_mean": round(sum(jains) / len(jains), 3) if jains else None,
        "longest_wait_min": round(max(waits, default=0) / 60, 1),
        "switches_per_outlet_h": round(busy_h / (len(relays) * hours), 2),
        "most_switches_in_an_hour": worst_hour,
        "shortest_on_min": round(min(on_spells) / 60, 1) if on_spells else None,
        "shortest_off_min": round(min(off_spells) / 60, 1) if off_spells else None,
        "fallback_s": run.fallback_s,
        "above_cap_in_outage_s": run.above_in_outage_s if run.name == "outage" else None,
        "delivered_kwh": round(delivered / 1000, 1),
        "needed_kwh": round(needed / 1000, 1),
    }


def _jain(xs: list[float]) -> float:
    total, squares = sum(xs), sum(x * x for x in xs)
    return 1.0 if squares == 0 else total * total / (len(xs) * squares)


def main(argv: list[str] | None = None, out: Callable[[str], None] = print) -> None:
    args = parser(__doc__).parse_args(argv)
    settings = allocation.Settings()
    trace = make_trace(2026, quick=args.quick)
    figures: dict[str, Any] = {
        "quick": args.quick,
        "outlets": 40,
        "cap_a": CAP_A,
        "cars": sum(1 for c in trace.cars if trace.start <= c.arrive < trace.end),
    }
    for mode in ("chargeline", "outage", "fcfs", "static"):
        began = time.perf_counter()
        got = replay(trace, mode, settings)
        got["replay_s"] = round(time.perf_counter() - began, 1)
        out(f"{mode:>10}: " + ", ".join(f"{k}={v}" for k, v in got.items()))
        sys.stdout.flush()
        figures[mode] = got
    # The trace's demand: what the cars ask when each charges as it arrives.
    figures["peak_demand_over_cap"] = figures["fcfs"]["peak_demand_over_cap"]
    emit("load_management", figures)


if __name__ == "__main__":
    main()

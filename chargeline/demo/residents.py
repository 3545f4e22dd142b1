"""The car park's residents: cars arrive at outlets, and their owners charge them through the
partner's app, following the field operation flow.

Each outlet has one ``Resident`` loop at a time: a car plugs in (into the simulated site,
the physical world), the resident scans the QR code (the partner starts a charge, some with
an end time), the car draws power (the partner gets ``charge.current_rise``), and the visit
ends one of four ways, chosen at random:

* ``leaves``: the resident stops the charge after a while (the partner calls stop);
* ``end-time``: the charge had an end time, and the edge stops it by its own timer;
* ``fills-up``: a small battery fills; the partner's status requests show no current, and
  it stops the charge;
* ``trips``: the car develops a fault and draws too much; the edge trips the breaker.

The site's two OCPP stations (an AC wallbox and a DC fast charger) get the same residents
through the same partner API, except that no car trips a station.

Every charge ends with a ``charge.stopped`` webhook (with the energy) or ``charge.failed``.
Durations are in simulated time, which runs ``time_scale`` times faster than real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2

from chargeline.demo.partner import Event, Partner
from chargeline.demo.site import outlet_id_of
from edge_agent.simulated import SimulatedSite
from ocpp_bridge.simulated import Car, Plug

MINUTE = 60.0
KINDS = ("leaves", "end-time", "fills-up", "trips")
WEIGHTS = (0.35, 0.25, 0.25, 0.15)
#: How long a resident who stopped a charge waits for its charge.stopped (real seconds): a
#: webhook that failed once is sent again after 1, 2, 4, 8, 16 … seconds.
ENDED_WITHIN_S = 60.0
FAULT_CURRENT_A = 26.0  # above the edge's over-current limit (20 A by default)


@dataclass(frozen=True)
class Plan:
    kind: str
    need_wh: float  # what the car's battery takes
    max_current_a: float
    end_after_s: float | None  # the charge's end time, from its start
    stop_after_s: float  # leaves: when the resident stops it; trips: when the fault starts

    @classmethod
    def draw(cls, rng: random.Random) -> Plan:
        kind = rng.choices(KINDS, WEIGHTS)[0]
        if kind == "fills-up":
            return cls(kind, rng.uniform(600, 1500), 16.0, None, 0.0)
        need, current = rng.uniform(20_000, 40_000), rng.choice((12.0, 16.0))
        if kind == "end-time":
            return cls(kind, need, current, rng.uniform(15, 45) * MINUTE, 0.0)
        after = rng.uniform(10, 40) if kind == "leaves" else rng.uniform(5, 15)
        return cls(kind, need, current, None, after * MINUTE)


class World:
    """Every outlet's residents, until ``closing`` is set; then running charges are stopped."""

    def __init__(
        self,
        partner: Partner,
        sites: dict[str, SimulatedSite],
        *,
        time_scale: float,
        seed: int | None = None,
        stations: dict[str, Plug] | None = None,
    ) -> None:
        self.partner = partner
        self.sites = sites  # controller id → its simulated site
        #: OCPP stations' connectors by outlet id: the station simulator's plug
        self.stations = stations or {}
        self.scale = time_scale
        self.rng = random.Random(seed)
        self.closing = asyncio.Event()
        self.tag = format(int(time.time()) % 0xFFFFFF, "06x")  # charge ids differ across runs
        self.charges: dict[str, str] = {}  # outlet id → its running charge's id
        self.plans: dict[str, Plan] = {}  # outlet id → the current visit's plan

    async def play(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            for cid, site in self.sites.items():
                for n in site.outlets:
                    tasks.create_task(self._outlet(cid, site, n))
            for outlet_id, plug in self.stations.items():
                tasks.create_task(self._connector(outlet_id, plug))

    async def sleep(self, sim_s: float) -> bool:
        """Wait ``sim_s`` simulated seconds; False if the demo started closing meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), sim_s / self.scale)
        return not self.closing.is_set()

    async def _outlet(self, cid: str, site: SimulatedSite, n: int) -> None:
        outlet_id = outlet_id_of(cid, n)
        visit = 0
        # Cars arrive over the first minutes rather than all at once.
        while await self.sleep(self.rng.uniform(0.5, 20) * MINUTE):
            visit += 1
            plan = Plan.draw(self.rng)
            site.plug_in(n, need_wh=plan.need_wh, max_current_a=plan.max_current_a)
            charge_id = f"wc-{self.tag}-{outlet_id}-{visit}"

            def fault(n: int = n) -> None:
                car = site.outlets[n].car
                if car is not None:
                    car.max_current_a = FAULT_CURRENT_A

            try:
                await self._visit(outlet_id, charge_id, plan, fault)
            except httpx2.HTTPError as exc:  # the API is unreachable: this visit is over
                self.partner.tally.say(f"{outlet_id}: {charge_id}: partner API failed: {exc!r}")
            if not self.closing.is_set():
                await self.sleep(self.rng.uniform(1, 5) * MINUTE)  # unplugging, driving off
            site.unplug(n)

    async def _connector(self, outlet_id: str, plug: Plug) -> None:
        """A station's connector: the same visits, but no car trips a breaker there (a
        station protects itself), and a DC charger's car draws far more."""
        visit = 0
        dc = plug.car is not None and plug.car.voltage_v > 300
        while await self.sleep(self.rng.uniform(0.5, 20) * MINUTE):
            visit += 1
            plan = Plan.draw(self.rng)
            while plan.kind == "trips":
                plan = Plan.draw(self.rng)
            plug.car = (
                Car(current_a=150.0, need_wh=plan.need_wh, voltage_v=400.0, soc_percent=35.0)
                if dc
                else Car(current_a=plan.max_current_a, need_wh=plan.need_wh, voltage_v=200.0)
            )
            charge_id = f"wc-{self.tag}-{outlet_id}-{visit}"
            try:
                await self._visit(outlet_id, charge_id, plan, lambda: None)
            except httpx2.HTTPError as exc:
                self.partner.tally.say(f"{outlet_id}: {charge_id}: partner API failed: {exc!r}")
            if not self.closing.is_set():
                await self.sleep(self.rng.uniform(1, 5) * MINUTE)
            plug.car = Car(current_a=0.0, voltage_v=400.0 if dc else 200.0)

    async def _visit(
        self, outlet_id: str, charge_id: str, plan: Plan, fault: Callable[[], None]
    ) -> None:
        partner = self.partner

        def ends(event: Event) -> bool:
            return event["type"] in ("charge.stopped", "charge.failed") and (
                event["data"].get("charge_id") == charge_id
            )

        ended = asyncio.ensure_future(partner.next_event(ends, within=24 * 3600))
        try:
            end_at = partner.now() + plan.end_after_s if plan.end_after_s else None
            state = await partner.start(outlet_id, charge_id, end_at)
            if state.startswith("refused") or state == "failed":
                return  # the resident gives up
            self.charges[outlet_id] = charge_id
            self.plans[outlet_id] = plan
            if plan.kind == "leaves":
                await self._until(ended, plan.stop_after_s)
            elif plan.kind == "trips":
                if await self._until(ended, plan.stop_after_s):
                    fault()
                    await self._until(ended, 5 * MINUTE)  # the edge trips the breaker
            elif plan.kind == "fills-up":
                while await self._until(ended, 5 * MINUTE):
                    status = await partner.status(outlet_id, within=10)
                    reading = (status or {}).get("reading") or {}
                    drawing_nothing = reading.get("current_a", 1.0) < 0.5
                    # Full, unless the site's cap holds it at 0 A (a station turned down
                    # to nothing): the app asks the charge's state.
                    if (
                        reading.get("breaker_on")
                        and drawing_nothing
                        and await partner.charge_state(charge_id) not in ("queued", "paused")
                    ):
                        break  # full: the partner stops it
            else:  # end-time: the edge's own timer stops it
                await self._until(ended, 24 * 3600)
            if not ended.done():
                await partner.stop(charge_id)
            try:  # webhooks are retried with backoff
                await asyncio.wait_for(asyncio.shield(ended), ENDED_WITHIN_S)
            except TimeoutError:
                partner.tally.say(f"{charge_id}: no end heard {ENDED_WITHIN_S:.0f} s after stop")
        finally:
            ended.cancel()
            self.charges.pop(outlet_id, None)

    async def _until(self, ended: asyncio.Future[Event], sim_s: float) -> bool:
        """Wait up to ``sim_s`` simulated seconds; True if the charge is still running then
        and the demo is not closing."""
        closing: asyncio.Future[Any] = asyncio.ensure_future(self.closing.wait())
        watched: set[asyncio.Future[Any]] = {ended, closing}
        try:
            await asyncio.wait(watched, timeout=sim_s / self.scale, return_when="FIRST_COMPLETED")
        finally:
            closing.cancel()
        return not ended.done() and not self.closing.is_set()

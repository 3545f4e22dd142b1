"""A simulated car park behind one controller: outlets, breakers, cars and a main meter.

Physics, per outlet, integrated at every ``read``:

* voltage: 200 V with ±1.5 V noise, sagging 0.1 V per ampere drawn;
* a plugged-in car draws its charger's current (8–16 A, ≈1.6–3.2 kW) while the breaker is
  ON, tapering linearly to zero over the last 10% of the energy it needs; a full car
  draws nothing;
* energy (Wh) integrates V·I over time, so it never decreases;
* the main meter integrates the outlets plus a building base load of ~1.5 kW.

Cars arrive and leave at random (seeded, so runs repeat). With ``autoplay`` the simulated
residents also close the breaker when their car arrives and open it when it leaves, which
stands in for the partner's start/stop commands in the demo. ``fail(outlet)`` makes a
breaker ignore commands, for testing the failure paths.
"""

from __future__ import annotations

import random
import zlib
from dataclasses import dataclass

from edge_agent.drivers import OutletSample, Sample

NOMINAL_V = 200.0
BASE_LOAD_W = 1500.0
MEAN_ARRIVAL_S = 40 * 60.0  # an empty outlet gets a car every ~40 minutes
MEAN_STAY_AFTER_FULL_S = 30 * 60.0


@dataclass
class Car:
    need_wh: float  # energy still wanted
    full_need_wh: float
    max_current_a: float
    leaves_at: float | None = None


@dataclass
class SimOutlet:
    number: int
    energy_wh: float = 0.0
    breaker_on: bool = False
    failed: bool = False
    car: Car | None = None
    current_a: float = 0.0
    voltage_v: float = NOMINAL_V


class SimulatedSite:
    """Implements both ``MeterReader`` and ``BreakerDriver``."""

    def __init__(
        self,
        *,
        outlets: int = 8,
        seed: int | str = 0,
        autoplay: bool = False,
        arrivals: bool = True,
        start: float = 0.0,
    ) -> None:
        """``arrivals``: cars come by themselves (else only through ``plug_in``);
        ``autoplay``: their breakers switch with them, as if someone started each charge."""
        self.rng = random.Random(zlib.crc32(str(seed).encode()))
        self.autoplay = autoplay
        self.arrivals = arrivals
        self.outlets = {
            n: SimOutlet(n, energy_wh=self.rng.uniform(0, 50_000)) for n in range(1, outlets + 1)
        }
        self.main_energy_wh = self.rng.uniform(1e5, 1e6)
        self.last = start

    # --- BreakerDriver -------------------------------------------------------------------
    def switch(self, outlet: int, on: bool) -> bool:
        sim = self.outlets[outlet]
        if not sim.failed:
            sim.breaker_on = on
        return sim.breaker_on

    def breaker_on(self, outlet: int) -> bool:
        return self.outlets[outlet].breaker_on

    def fail(self, outlet: int, failed: bool = True) -> None:
        self.outlets[outlet].failed = failed

    def plug_in(self, outlet: int, *, need_wh: float, max_current_a: float = 16.0) -> None:
        self.outlets[outlet].car = Car(need_wh, need_wh, max_current_a)

    def unplug(self, outlet: int) -> None:
        self.outlets[outlet].car = None

    # --- MeterReader ---------------------------------------------------------------------
    def read(self, now: float) -> Sample:
        dt = max(0.0, now - self.last) if self.last else 0.0
        self.last = now
        total_w = BASE_LOAD_W * self.rng.uniform(0.8, 1.2)
        samples = []
        for sim in self.outlets.values():
            self._residents(sim, now, dt)
            self._draw(sim, dt)
            total_w += sim.voltage_v * sim.current_a
            samples.append(
                OutletSample(
                    sim.number, sim.energy_wh, sim.voltage_v, sim.current_a, sim.breaker_on
                )
            )
        self.main_energy_wh += total_w * dt / 3600.0
        return Sample(now, self.main_energy_wh, tuple(samples))

    def _draw(self, sim: SimOutlet, dt: float) -> None:
        car = sim.car
        current = 0.0
        if car is not None and sim.breaker_on and car.need_wh > 0:
            taper_zone = 0.1 * car.full_need_wh
            current = car.max_current_a * min(1.0, car.need_wh / taper_zone) if taper_zone else 0.0
            current = max(0.5, current) if car.need_wh > 1 else 0.0
        sim.current_a = round(current, 2)
        sim.voltage_v = round(NOMINAL_V - 0.1 * current + self.rng.gauss(0, 1.5), 1)
        wh = sim.voltage_v * sim.current_a * dt / 3600.0
        sim.energy_wh += wh
        if car is not None:
            car.need_wh = max(0.0, car.need_wh - wh)

    def _residents(self, sim: SimOutlet, now: float, dt: float) -> None:
        car = sim.car
        if car is None:
            if self.arrivals and dt and self.rng.random() < dt / MEAN_ARRIVAL_S:
                sim.car = Car(
                    need_wh=(need := self.rng.uniform(2_000, 30_000)),
                    full_need_wh=need,
                    max_current_a=self.rng.choice((8.0, 12.0, 16.0)),
                )
                if self.autoplay:
                    self.switch(sim.number, True)
            return
        if car.need_wh <= 1 and car.leaves_at is None:
            car.leaves_at = now + self.rng.expovariate(1 / MEAN_STAY_AFTER_FULL_S)
        if car.leaves_at is not None and now >= car.leaves_at:
            sim.car = None
            if self.autoplay:
                self.switch(sim.number, False)

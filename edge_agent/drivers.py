"""What the agent needs from hardware. Real drivers (Modbus meters, relay boards behind the
interface converter) and the simulator implement these protocols."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class OutletSample:
    outlet: int
    energy_wh: float  # cumulative, never decreasing
    voltage_v: float
    current_a: float
    breaker_on: bool  # as reported by the breaker's feedback contact


@dataclass(frozen=True, slots=True)
class Sample:
    at: float
    main_energy_wh: float
    outlets: tuple[OutletSample, ...]


class MeterReader(Protocol):
    def read(self, now: float) -> Sample:
        """Measure every outlet and the main meter at ``now``."""
        ...


class BreakerDriver(Protocol):
    def switch(self, outlet: int, on: bool) -> bool:
        """Command a breaker; return the state its feedback contact reports afterwards."""
        ...

    def breaker_on(self, outlet: int) -> bool:
        """The breaker's reported state."""
        ...

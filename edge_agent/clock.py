"""Time, passed in: the agent never calls ``time.time()`` itself.

``ScaledClock`` runs simulated time ``scale`` times faster than real time, so tests and the
demo can live through minutes in fractions of a second. With ``scale=1`` it is the wall clock.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the Unix epoch, in this clock's time."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of this clock's time."""
        ...

    def monotonic(self) -> float:
        """Real seconds from an arbitrary origin, for time-outs in real time (resends)."""
        ...


class ScaledClock:
    def __init__(self, scale: float = 1.0, *, start: float | None = None) -> None:
        if scale <= 0:
            raise ValueError("clock scale must be positive")
        self.scale = scale
        self._origin_real = time.monotonic()
        self._origin = time.time() if start is None else start

    def now(self) -> float:
        return self._origin + (time.monotonic() - self._origin_real) * self.scale

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.scale)

    def monotonic(self) -> float:
        return time.monotonic()

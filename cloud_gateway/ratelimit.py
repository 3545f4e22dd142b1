"""Token buckets per caller: ``rate`` requests per second on average, ``burst`` at once."""

from __future__ import annotations

import math
import time


class RateLimiter:
    MAX_KEYS = 100_000  # a flood of distinct keys cannot grow memory without bound

    def __init__(self, rate: float, burst: int) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate, self.burst = rate, float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}  # key → (tokens, when)

    def take(self, key: str, now: float | None = None) -> float:
        """Spend one token: 0.0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        tokens, when = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - when) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        if len(self._buckets) >= self.MAX_KEYS and key not in self._buckets:
            self._buckets.clear()
        self._buckets[key] = (tokens - 1.0, now)
        return 0.0


def retry_after(seconds: float) -> str:
    """The Retry-After header value: whole seconds, at least one."""
    return str(max(1, math.ceil(seconds)))

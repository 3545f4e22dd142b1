"""Logging what clients control without letting them write the log.

``shown`` bounds and escapes a value a client chose (a client id, a username, a topic)
before it goes into a log line. ``Summarised`` logs the first few of a kind of event per
interval and then one line saying how many more there were, so a flood of refusals
costs a few lines a minute, not a line each.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

#: Characters of a client-controlled value shown in a log line.
SHOWN_CHARS = 64


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``value`` quoted with every control or non-ASCII character escaped, cut to
    ``limit`` characters with the length of what was left out."""
    if value is None:
        return "None"
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    head = text[:limit].encode("ascii", "backslashreplace").decode("ascii")
    escaped = repr(head)
    if len(text) > limit:
        return f"{escaped}…(+{len(text) - limit} chars)"
    return escaped


class Summarised:
    """A logger for events that can come in floods.

    ``warning(kind, msg, *args)`` logs the first ``burst`` events of ``kind`` in each
    ``interval_s``; the others are counted, and the next event of that kind after the
    interval logs how many were left out. Keep ``kind`` to a bounded set
    (never a value a client chose): one is remembered per kind.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger, self.interval_s, self.burst, self.clock = logger, interval_s, burst, clock
        self._since: dict[str, float] = {}
        self._logged: Counter[str] = Counter()
        self._quiet: Counter[str] = Counter()
        self.total: Counter[str] = Counter()

    def warning(self, kind: str, msg: str, *args: object) -> None:
        self.total[kind] += 1
        now = self.clock()
        started = self._since.get(kind)
        if started is None or now - started >= self.interval_s:
            self._report_quiet(kind, now - started if started is not None else 0.0)
            self._since[kind], self._logged[kind] = now, 0
        if self._logged[kind] >= self.burst:
            self._quiet[kind] += 1
            return
        self._logged[kind] += 1
        self.logger.warning(msg, *args)

    def _report_quiet(self, kind: str, over_s: float) -> None:
        left_out = self._quiet.pop(kind, 0)
        if left_out:
            self.logger.warning(
                "… and %d more %s in the last %.0f s (not logged one by one)",
                left_out,
                kind,
                over_s,
            )


#: Libraries that log a line per client misstep (amqtt per failed connection, asyncio
#: per failed accept), in full.
CHATTY_LIBRARIES = ("amqtt", "asyncio", "transitions", "uvicorn")


class FloodFilter(logging.Filter):
    """For log handlers: lines from ``libraries`` (whose lines a client can trigger) pass
    ``burst`` times per kind (their first ``KEY_CHARS`` characters) and interval, and no
    such line is longer than ``MAX_CHARS``. What is held back is counted in ``dropped``.
    chargeline's own lines pass untouched (they use ``shown`` and ``Summarised``)."""

    KEY_CHARS = 40
    MAX_CHARS = 500
    MAX_KINDS = 1_000

    def __init__(
        self,
        libraries: tuple[str, ...] = CHATTY_LIBRARIES,
        interval_s: float = 10.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.libraries = libraries
        self.interval_s, self.burst, self.clock = interval_s, burst, clock
        self._window: dict[str, tuple[float, int]] = {}
        self.dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.split(".", 1)[0] not in self.libraries:
            return True
        if record.levelno >= logging.ERROR and record.exc_info:
            return True  # crashes are always worth their lines
        text = record.getMessage()
        key = f"{record.name}:{text[: self.KEY_CHARS]}"
        now = self.clock()
        started, count = self._window.get(key, (now, 0))
        if now - started >= self.interval_s:
            started, count = now, 0
        if count >= self.burst:
            self.dropped += 1
            return False
        if len(self._window) >= self.MAX_KINDS and key not in self._window:
            self._window.clear()
        self._window[key] = (started, count + 1)
        limit = self.MAX_CHARS * (20 if record.levelno >= logging.ERROR else 1)
        if len(text) > limit:
            record.msg, record.args = shown(text, limit), None
        return True

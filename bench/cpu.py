"""CPU time by role while a benchmark round runs, read from ``/proc``.

A ratio between two rounds on a 2-core machine is partly a ratio of CPU: when both cores
are busy, a consumer that needs more CPU per reading takes fewer readings a second
whatever its latency. ``CpuByRole`` says where the CPU went (the publisher, the broker,
the consumer in this process, PostgreSQL), so a benchmark can print CPU per reading for
each beside its rate.

A thread lists ``/proc`` a few times a second and keeps each matching process's latest
``utime + stime``; a process that exits between two looks loses at most its last
quarter-second (a few milliseconds of CPU for the processes measured here, which idle
before they end).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

_TICK = os.sysconf("SC_CLK_TCK")

#: Roles by command line; the consumer is the benchmark's own process.
ROLES: dict[str, Callable[[str], bool]] = {
    "publisher": lambda cmd: "bench.publisher" in cmd,
    "broker": lambda cmd: "mosquitto" in cmd.split(" ", 1)[0] or "chargeline broker" in cmd,
    "postgresql": lambda cmd: cmd.startswith("postgres") or "/bin/postgres " in cmd,
}


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def _command(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


class CpuByRole:
    """``with CpuByRole() as cpu: …`` then ``cpu.seconds`` (role → CPU seconds) and
    ``cpu.wall`` (seconds between enter and exit)."""

    def __init__(self, every_s: float = 0.25) -> None:
        self.every_s = every_s
        self.seconds: dict[str, float] = {}
        self.wall = 0.0
        self._own = os.getpid()
        self._roles: dict[int, str | None] = {}
        self._start: dict[int, float] = {}
        self._latest: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-by-role", daemon=True)
        self._began = 0.0

    def _role(self, pid: int) -> str | None:
        if pid not in self._roles:
            command = _command(pid)
            role = "consumer" if pid == self._own else None
            for name, matches in ROLES.items():
                if role is None and command and matches(command):
                    role = name
            self._roles[pid] = role
        return self._roles[pid]

    def _look(self, *, first: bool) -> None:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            if self._role(pid) is None:
                continue
            seconds = _cpu_seconds(pid)
            if seconds is None:
                continue
            if first:
                self._start[pid] = seconds
            self._latest[pid] = seconds

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._look(first=False)

    def __enter__(self) -> CpuByRole:
        self._look(first=True)
        self._began = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.wall = time.perf_counter() - self._began
        self._stop.set()
        self._thread.join()
        self._look(first=False)
        totals: dict[str, float] = {}
        for pid, latest in self._latest.items():
            role = self._roles[pid]
            assert role is not None
            totals[role] = totals.get(role, 0.0) + latest - self._start.get(pid, 0.0)
        self.seconds = totals

    def per_reading_us(self, readings: int) -> dict[str, float]:
        """CPU per reading by role, in microseconds, and ``cores``: how many cores were
        busy on average."""
        figures = {role: round(s / readings * 1e6, 2) for role, s in sorted(self.seconds.items())}
        figures["total"] = round(sum(self.seconds.values()) / readings * 1e6, 2)
        figures["cores"] = round(sum(self.seconds.values()) / self.wall, 2) if self.wall else 0.0
        return figures

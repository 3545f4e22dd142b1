"""The reconciler's memory on disk: per outlet, what was applied; and the cloud clock offset.

Written (and fsynced by SQLite) before a command is acknowledged, so an acknowledged
generation is never applied twice, even across a power cut. The clock offset rides along
with those writes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge_agent.reconciler import OutletMemory


class CommandMemory:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS outlets (outlet INTEGER PRIMARY KEY,"
            " applied_generation INTEGER NOT NULL, on_ INTEGER NOT NULL,"
            " charge_id TEXT, stop_at REAL)"
        )
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value REAL)")
        self._offset: float | None = None

    def close(self) -> None:
        self._write_offset()
        self.db.close()

    def load(self, outlets: range) -> dict[int, OutletMemory]:
        stored = {
            row[0]: OutletMemory(row[0], row[1], bool(row[2]), row[3], row[4])
            for row in self.db.execute(
                "SELECT outlet, applied_generation, on_, charge_id, stop_at FROM outlets"
            )
        }
        return {n: stored.get(n, OutletMemory(n)) for n in outlets}

    def save(self, memory: OutletMemory) -> None:
        """Persist one outlet's memory (and a newly learned clock offset): one fsync."""
        self.db.execute("BEGIN")
        self._write_offset()
        self.db.execute(
            "INSERT INTO outlets VALUES (?, ?, ?, ?, ?) ON CONFLICT (outlet) DO UPDATE SET"
            " applied_generation = excluded.applied_generation, on_ = excluded.on_,"
            " charge_id = excluded.charge_id, stop_at = excluded.stop_at",
            (
                memory.outlet,
                memory.applied_generation,
                int(memory.on),
                memory.charge_id,
                memory.stop_at,
            ),
        )
        self.db.execute("COMMIT")

    def clock_offset(self) -> float | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = 'clock_offset'").fetchone()
        return float(row[0]) if row else None

    def save_clock_offset(self, offset: float) -> None:
        """Remember the offset; it reaches the disk with the next ``save`` (or ``close``).

        It is an estimate that the next live command refreshes, not worth an fsync of its
        own on the way to a breaker.
        """
        self._offset = offset

    def _write_offset(self) -> None:
        if self._offset is None:
            return
        self.db.execute(
            "INSERT INTO meta VALUES ('clock_offset', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (self._offset,),
        )
        self._offset = None

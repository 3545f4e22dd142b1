"""The reconciler's memory on disk: per outlet, what was applied.

Written (and fsynced by SQLite) before a command is acknowledged, so an acknowledged
generation is never applied twice, even across a power cut. The cloud clock is not kept:
after a boot the local clock may have jumped, so the edge learns it again from the cloud
(reconciler rule 5). A ``clock_offset`` left in ``meta`` by an older version is ignored.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edge_agent import budget
from edge_agent.budget import BudgetMemory
from edge_agent.reconciler import OutletMemory
from schemas.messages import Budget


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
        # The last budget's version, order and safe share (edge_agent.budget): a reboot with
        # the cloud gone still keeps the controller to its safe share. Its amps are not kept:
        # a budget does not outlive the boot that judged it (the clock may have jumped).
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS budget (id INTEGER PRIMARY KEY CHECK (id = 1),"
            " version INTEGER NOT NULL, order_ TEXT NOT NULL, fallback_a REAL)"
        )

    def close(self) -> None:
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
        """Persist one outlet's memory: one fsync."""
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

    def load_budget(self) -> BudgetMemory:
        row = self.db.execute("SELECT version, order_, fallback_a FROM budget").fetchone()
        if row is None:
            return BudgetMemory()
        order = tuple(int(n) for n in row[1].split(",") if n)
        return BudgetMemory(version=row[0], order=order, fallback_a=row[2])

    def save_budget(self, memory: BudgetMemory) -> None:
        self.db.execute(
            "INSERT INTO budget VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
            " version = excluded.version, order_ = excluded.order_,"
            " fallback_a = excluded.fallback_a",
            (memory.version, ",".join(map(str, memory.order)), memory.fallback_a),
        )


class BudgetKeeper:
    """The budget one controller keeps to (an edge's, or a station's in the OCPP bridge):
    judged by ``edge_agent.budget``'s rules as it arrives, its version, order and safe share
    kept on disk (``CommandMemory``) so that a reboot with the cloud gone still keeps the
    controller to its safe share. A budget that arrives before the cloud clock is known
    waits, and is judged by ``retry`` once it is."""

    def __init__(self, store: CommandMemory, *, max_age_s: float) -> None:
        self.store = store
        self.max_age_s = max_age_s
        self.memory = store.load_budget()
        self.waiting: Budget | None = None

    def receive(self, got: Budget, *, cloud_now: float | None) -> bool:
        """Judge a budget; True when what the controller keeps to changed."""
        kept = budget.received(self.memory, got, cloud_now=cloud_now, max_age_s=self.max_age_s)
        if kept is None:
            self.waiting = got
            return False
        self.waiting = None
        if kept == self.memory:
            return False
        before = self.memory
        if (kept.version, kept.order, kept.fallback_a) != (
            before.version,
            before.order,
            before.fallback_a,
        ):
            self.store.save_budget(kept)
        self.memory = kept
        return True

    def retry(self, *, cloud_now: float | None) -> bool:
        """The cloud clock is known now: judge the budget that waited for it, if any."""
        return self.waiting is not None and self.receive(self.waiting, cloud_now=cloud_now)

    def limit(self, *, cloud_now: float | None, safe_share_a: float | None) -> budget.Limit:
        return budget.limit(self.memory, cloud_now=cloud_now, safe_share_a=safe_share_a)

"""Store-and-forward buffer on disk (SQLite): minute frames wait here until acknowledged.

Frames are added as they are measured. A frame gets a batch number (``seq``) when it is
first sent: all frames without one, up to ``max_frames`` per batch, oldest first, so a
controller coming back from an outage sends its backlog in a few large batches. A batch
keeps its ``seq`` and its frames for good; resends repeat it byte for byte. A ``meter/ack``
deletes exactly the batches it names. The next ``seq`` is stored in the same transaction
that assigns it, so numbers are never reused across restarts.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import msgpack

from schemas.messages import MeterBatch, MeterFrame, OutletReading

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS frames (minute INTEGER PRIMARY KEY, body BLOB NOT NULL, seq INTEGER);
CREATE INDEX IF NOT EXISTS frames_seq ON frames (seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class FrameBuffer:
    """``durable``: every write reaches the disk before it returns (an fsync per write),
    what an edge controller needs across a power cut. The OCPP bridge, which keeps one
    buffer per station for thousands of stations in one process, writes through the
    operating system instead (SQLite's ``synchronous=NORMAL`` in WAL mode): safe across
    a crash of the process, not of the machine."""

    def __init__(
        self, path: Path, *, controller_id: str, max_frames: int, durable: bool = True
    ) -> None:
        self.controller_id = controller_id
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.db.executescript(_SCHEMA)
        self.max_frames = max_frames
        self.dropped = 0

    def close(self) -> None:
        self.db.close()

    def add(self, frame: MeterFrame) -> None:
        """Keep a new frame; beyond ``max_frames`` the oldest unsent ones make room."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT OR IGNORE INTO frames (minute, body) VALUES (?, ?)",
                (frame.minute, msgpack.packb(frame)),
            )
            (count,) = self.db.execute("SELECT count(*) FROM frames").fetchone()
            excess = count - self.max_frames
            if excess > 0:
                self.db.execute(
                    "DELETE FROM frames WHERE minute IN (SELECT minute FROM frames ORDER BY minute LIMIT ?)",
                    (excess,),
                )
                self.dropped += excess
                log.error(
                    "buffer full: dropped the %d oldest frames (%d in total)", excess, self.dropped
                )

    def assign(self, max_frames: int) -> list[int]:
        """Give every frame without a batch a ``seq``; return the new seqs."""
        new: list[int] = []
        if self.db.execute("SELECT 1 FROM frames WHERE seq IS NULL LIMIT 1").fetchone() is None:
            return new  # nothing to number: no write (a resend check calls this often)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            row = self.db.execute("SELECT value FROM meta WHERE key = 'next_seq'").fetchone()
            next_seq = row[0] if row else 1
            while True:
                minutes = [
                    m
                    for (m,) in self.db.execute(
                        "SELECT minute FROM frames WHERE seq IS NULL ORDER BY minute LIMIT ?",
                        (max_frames,),
                    )
                ]
                if not minutes:
                    break
                self.db.executemany(
                    "UPDATE frames SET seq = ? WHERE minute = ?", [(next_seq, m) for m in minutes]
                )
                new.append(next_seq)
                next_seq += 1
            if new:
                self.db.execute(
                    "INSERT INTO meta (key, value) VALUES ('next_seq', ?)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (next_seq,),
                )
        return new

    def batches(self) -> dict[int, tuple[MeterFrame, ...]]:
        """Every unacknowledged batch, by seq, frames in minute order."""
        out: dict[int, list[MeterFrame]] = {}
        for seq, body in self.db.execute(
            "SELECT seq, body FROM frames WHERE seq IS NOT NULL ORDER BY seq, minute"
        ):
            minute, main, readings = msgpack.unpackb(body)
            frame = MeterFrame(
                minute=minute,
                main_energy_wh=main,
                outlets=tuple(OutletReading(*r) for r in readings),
            )
            out.setdefault(seq, []).append(frame)
        return {seq: tuple(frames) for seq, frames in out.items()}

    def due(
        self, sent_at: dict[int, float], *, now: float, older_than: float | None, max_frames: int
    ) -> list[MeterBatch]:
        """The batches to send now, numbered first: those never sent, or with
        ``older_than``, those last sent before it. ``sent_at`` (seq → when last sent) is
        the caller's; each batch returned is marked sent at ``now``."""
        self.assign(max_frames)
        due = []
        for seq, frames in self.batches().items():
            last = sent_at.get(seq)
            if last is not None and (older_than is None or last > older_than):
                continue
            sent_at[seq] = now
            due.append(MeterBatch(controller_id=self.controller_id, seq=seq, frames=frames))
        return due

    def ack(self, seqs: tuple[int, ...]) -> int:
        """Forget the named batches; return how many frames that freed."""
        with self.db:
            cur = self.db.executemany("DELETE FROM frames WHERE seq = ?", [(s,) for s in seqs])
            return cur.rowcount

    def __len__(self) -> int:
        (count,) = self.db.execute("SELECT count(*) FROM frames").fetchone()
        return int(count)

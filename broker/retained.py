"""Retained messages that survive broker restarts, byte for byte.

amqtt keeps retained messages in memory only. Its contrib persistence plugin needs
SQLAlchemy, wipes its store on a clean shutdown by default and decodes payloads as text.
This plugin keeps just the retained messages (for chargeline: the desired state of every
outlet and each controller's presence and reported state) in SQLite as blobs, writes on
every change (on a thread of its own, so the broker never waits for the disk) and loads
them back before the first client connects.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.broker import RetainedApplicationMessage
from amqtt.plugins.base import BasePlugin

log = logging.getLogger(__name__)


class RetainedStore(BasePlugin[Any]):  # type: ignore[misc]  # amqtt ships no stubs
    @dataclass
    class Config:
        path: str = "retained.sqlite"

    def __init__(self, context: Any) -> None:
        super().__init__(context)
        self.path = Path(self.config.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer = _Writer(self.path)

    async def on_broker_post_start(self) -> None:
        retained = self.context.retained_messages
        count = 0
        with sqlite3.connect(self.path) as db:
            for topic, payload, qos in db.execute("SELECT topic, payload, qos FROM retained"):
                retained[topic] = RetainedApplicationMessage(None, topic, bytes(payload), qos)
                count += 1
        log.info("restored %d retained messages", count)

    async def on_broker_retained_message(
        self, *, client_id: str | None, retained_message: RetainedApplicationMessage
    ) -> None:
        if client_id is not None:
            return  # a per-session queue entry, not a topic's retained message
        data = retained_message.data
        self.writer.put(
            retained_message.topic, bytes(data) if data else None, retained_message.qos or 0
        )

    async def close(self) -> None:
        self.writer.close()


_CLOSE = object()


class _Writer:
    """Writes retained messages on its own thread, in arrival order, one fsync per batch.

    An fsync takes 0.3–1 ms on these machines; done inline it stalled the broker's event
    loop, and every client's messages with it, twice per command (desired and reported
    state). ``close`` waits until everything queued is on disk.
    """

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER)"
        )
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="retained-writer", daemon=True)
        self.thread.start()

    def put(self, topic: str, payload: bytes | None, qos: int) -> None:
        """Queue one change; ``payload`` None (an empty retained message) deletes the topic."""
        self.queue.put((topic, payload, qos))

    def close(self) -> None:
        if self.thread.is_alive():
            self.queue.put(_CLOSE)
            self.thread.join()

    def _run(self) -> None:
        closing = False
        while not closing:
            batch = [self.queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 1000:
                    batch.append(self.queue.get_nowait())
            closing = _CLOSE in batch
            changes = [item for item in batch if item is not _CLOSE]
            try:
                self._write(changes)
            except sqlite3.Error:
                log.exception("could not store %d retained messages", len(changes))
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
        self.db.close()

    def _write(self, changes: list[tuple[str, bytes | None, int]]) -> None:
        if not changes:
            return
        self.db.execute("BEGIN")
        for topic, payload, qos in changes:
            if payload is None:
                self.db.execute("DELETE FROM retained WHERE topic = ?", (topic,))
            else:
                self.db.execute(
                    "INSERT INTO retained (topic, payload, qos) VALUES (?, ?, ?)"
                    " ON CONFLICT (topic) DO UPDATE SET payload = excluded.payload,"
                    " qos = excluded.qos",
                    (topic, payload, qos),
                )
        self.db.execute("COMMIT")

"""Retained messages that survive broker restarts, byte for byte.

amqtt keeps retained messages in memory only. Its contrib persistence plugin needs
SQLAlchemy, wipes its store on a clean shutdown by default and decodes payloads as text.
This plugin keeps just the retained messages (for chargeline: the desired state of every
outlet and each controller's presence and reported state) in SQLite as blobs, writes on
every change and loads them back before the first client connects.
"""

from __future__ import annotations

import logging
import sqlite3
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
        path = Path(self.config.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS retained (topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER)"
        )

    async def on_broker_post_start(self) -> None:
        retained = self.context.retained_messages
        count = 0
        for topic, payload, qos in self.db.execute("SELECT topic, payload, qos FROM retained"):
            retained[topic] = RetainedApplicationMessage(None, topic, bytes(payload), qos)
            count += 1
        log.info("restored %d retained messages", count)

    async def on_broker_retained_message(
        self, *, client_id: str | None, retained_message: RetainedApplicationMessage
    ) -> None:
        if client_id is not None:
            return  # a per-session queue entry, not a topic's retained message
        topic, data = retained_message.topic, retained_message.data
        if data:
            self.db.execute(
                "INSERT INTO retained (topic, payload, qos) VALUES (?, ?, ?)"
                " ON CONFLICT (topic) DO UPDATE SET payload = excluded.payload, qos = excluded.qos",
                (topic, bytes(data), retained_message.qos or 0),
            )
        else:
            self.db.execute("DELETE FROM retained WHERE topic = ?", (topic,))

    async def close(self) -> None:
        self.db.close()

"""The ingest process: ``async with Ingest(settings, url) as ingest: await ingest.run()``.

Three tasks share one ``Pending`` buffer:

* **receive** reads MQTT messages (``ingest.paho_link``: the per-message cost decides
  how many controllers one process serves) and triages each into the buffer. When the
  buffer holds ``max_pending_messages`` it stops reading the socket, so a slow or absent
  database costs bounded memory and TCP pushes back to the broker. Anything lost on the
  way was never acknowledged to the edge, which resends it (it keeps every batch until
  acked).
* **flush** swaps the buffer out when it has ``flush_max_rows`` readings or its oldest
  message is ``flush_max_delay_s`` old and writes it in one transaction, retrying the same
  buffer until the database takes it. Only then are its batches due an acknowledgement.
* **ack** publishes ``meter/ack``, merging per controller every batch committed within
  ``ack_max_delay_s``: a controller catching up on a backlog sends many batches in a row,
  and one ack for all of them spares the broker (with amqtt, an ack costs the broker about
  as much as the batch it acknowledges). In steady operation a controller sends one batch
  a minute, so each batch still gets its own ack, at most ``ack_max_delay_s`` later.
* **registry** reloads the registry on NOTIFY from the database, or periodically.
* **silence** is the application heartbeat (``charging.status``): a controller that has
  said nothing for ``silence_timeout_s`` is marked offline and the partners are told.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, NamedTuple, Self

import psycopg
from prometheus_client import Histogram

from charging import status
from ingest.paho_link import PahoLink
from ingest.settings import IngestSettings
from ingest.store import Store
from ingest.triage import Pending, Triage
from kernel import mqtt
from schemas.codec import encode
from schemas.messages import MAX_ACK_SEQS, MeterAck
from schemas.topics import TopicKind
from store.registry import RegistrySnapshot

log = logging.getLogger(__name__)

SUBSCRIBED = (
    TopicKind.METER,
    TopicKind.EVENT,
    TopicKind.ACK,
    TopicKind.STATE,
    TopicKind.PRESENCE,
)


class Fleet(NamedTuple):
    online: int
    offline: int
    gaps: int
    missing_batches: int


#: The fleet's figures for the metrics (controllers registered, by presence; batches
#: missing between those stored, from the ranges kept by migration 0024).
_FLEET = """
SELECT count(*) FILTER (WHERE s.online),
       count(*) FILTER (WHERE s.online IS NOT TRUE),
       (SELECT count(*) FROM meter_seq_gap_ranges),
       (SELECT coalesce(sum(missing_to - missing_from + 1), 0) FROM meter_seq_gap_ranges)
FROM controllers c LEFT JOIN controller_status s USING (controller_id)
"""


class Counters:
    def __init__(self) -> None:
        self.messages = 0
        self.readings = 0
        self.batches = 0
        self.dead_letters = 0
        self.writes = 0
        self.write_failures = 0
        self.acks = 0
        #: Dead letters by kind (``Refusal``) and edge events by kind, for the metrics.
        self.refused: Counter[str] = Counter()
        self.events: Counter[str] = Counter()

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


#: Allocations between two young-generation collections (Python's default: 700).
GC_YOUNG_THRESHOLD = 10_000


def keep_the_collector_off_the_heap() -> None:
    """Ingest allocates a few objects per reading, and a write's rows live until it
    commits, so with Python's defaults the cyclic garbage collector ran hundreds of young
    and several full collections per second at an evening peak, each full one walking
    every object the process holds: 450 ms of every 4.4 s (bench.ingest_live's peak,
    measured with gc.callbacks). What ingest holds at start (modules, schemas, settings)
    is never garbage, so it is frozen out of the collector's sight, and young
    collections run every 10,000 allocations instead of 700. Nearly everything ingest
    frees goes by reference counting; the collector still runs, less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


class Ingest:
    def __init__(self, settings: IngestSettings, *, database_url: str) -> None:
        self.settings = settings
        self.url = database_url
        self.topics = settings.topics
        self.counters = Counters()
        self.pending = Pending()
        self._pending_since: float | None = None
        #: When the oldest message of the write in progress arrived (None: no write).
        self._writing_since: float | None = None
        #: The last database write (or connection) succeeded: readiness.
        self.database_ok = False
        #: The fleet as the database sees it, refreshed by ``_fleet_forever`` (None until
        #: first read): controllers online and offline, gap ranges, batches missing.
        self.fleet: Fleet | None = None
        #: Seconds per database write (both transactions), for the metrics.
        self.write_seconds = Histogram(
            "chargeline_ingest_database_write_seconds",
            "time to store one write's messages (readings, batches, charges) and commit",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=None,
        )
        self._has_data = asyncio.Event()
        self._full = asyncio.Event()
        self._link: PahoLink | None = None
        self._unacked: defaultdict[str, list[int]] = defaultdict(list)
        self._heard_noted: dict[str, float] = {}  # controller → monotonic time noted
        self._has_unacked = asyncio.Event()
        self._store: Store | None = None
        self._triage: Triage | None = None
        self.ready = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._store = await self._connect_store()
        self.database_ok = True
        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            self._triage = Triage(self.topics, await RegistrySnapshot.load(conn))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        log.info("ingest totals at stop: %s", self.counters.as_dict())
        if self._store is not None:
            await self._store.close()

    async def run(self) -> None:
        keep_the_collector_off_the_heap()
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._receive_forever(), name="ingest-receive")
            tasks.create_task(self._flush_forever(), name="ingest-flush")
            tasks.create_task(self._ack_forever(), name="ingest-ack")
            tasks.create_task(self._registry_forever(), name="ingest-registry")
            tasks.create_task(self._report_forever(), name="ingest-report")
            tasks.create_task(self._silence_forever(), name="ingest-silence")
            tasks.create_task(self._fleet_forever(), name="ingest-fleet")

    # --- receive -----------------------------------------------------------------------
    async def _receive_forever(self) -> None:
        settings = self.settings
        subscriptions = [
            (
                self.topics.shared(settings.share_group, kind)
                if settings.share_group
                else self.topics.all_controllers(kind),
                1,
            )
            for kind in SUBSCRIBED
        ]
        self._link = PahoLink(
            settings.mqtt,
            client_id=settings.client_id,
            subscriptions=subscriptions,
            on_message=self._on_message,
        )
        await self._link.run(on_connected=self._on_connected)

    def _on_connected(self) -> None:
        log.info(
            "ingest connected to %r, subscribed below %s", self.settings.mqtt, self.topics.root
        )
        self.ready.set()

    def _on_message(self, topic: str, payload: bytes) -> None:
        """Triage one message into the pending buffer (runs on the event loop, per message)."""
        assert self._triage is not None and self._link is not None
        pending = self.pending
        if not pending.messages:
            self._pending_since = time.monotonic()
            self._has_data.set()
        self._triage.accept(pending, topic, payload)
        if pending.rows >= self.settings.flush_max_rows:
            self._full.set()
        if len(pending) >= self.settings.max_pending_messages:
            # Backpressure: stop reading until the flush swaps the buffer out. If that takes
            # longer than the keepalive the broker drops the session; the edges resend.
            self._link.pause_reading()
            self._full.set()

    # --- flush -------------------------------------------------------------------------
    async def _flush_forever(self) -> None:
        while True:
            await self._has_data.wait()
            since = self._pending_since or time.monotonic()
            remaining = self.settings.flush_max_delay_s - (time.monotonic() - since)
            if remaining > 0:
                with contextlib.suppress(TimeoutError):  # not wait_for: see mqtt._Client
                    async with asyncio.timeout(remaining):
                        await self._full.wait()
            batch, self.pending = self.pending, Pending()
            self._writing_since, self._pending_since = self._pending_since, None
            self._has_data.clear()
            self._full.clear()
            if self._link is not None:
                self._link.resume_reading()
            await self._write(batch)
            self._writing_since = None
            if batch.clock_requests:
                self._send_acks({cid: [] for cid in batch.clock_requests})
            for cid, seqs in batch.acks.items():
                self._unacked[cid].extend(seqs)
            if batch.acks:
                self._has_unacked.set()

    async def _write(self, batch: Pending) -> None:
        batch.heard = self._heard_due(batch.heard)
        delays = mqtt.backoff(first=0.2, cap=5.0)
        while True:
            try:
                if self._store is None:
                    self._store = await self._connect_store()
                with self.write_seconds.time():
                    await self._store.write(batch)
                self.database_ok = True
                break
            except psycopg.Error as exc:
                self.database_ok = False
                self.counters.write_failures += 1
                delay = next(delays)
                log.warning(
                    "database write of %d readings failed (%s); retrying in %.1f s",
                    batch.rows,
                    exc,
                    delay,
                )
                if self._store is not None:
                    with contextlib.suppress(psycopg.Error):
                        await self._store.close()
                    self._store = None
                await asyncio.sleep(delay)
        c = self.counters
        c.writes += 1
        c.messages += batch.messages
        c.readings += len(batch.outlet_rows)
        c.batches += len(batch.batch_rows)
        c.dead_letters += len(batch.dead_letters)
        for event in batch.events:
            c.events[event.kind] += 1
        for letter in batch.dead_letters:
            c.refused[letter.kind] += 1
            log.warning(
                "dead letter from %s on %s: %s",
                letter.controller_id,
                letter.topic,
                letter.reason,
                extra={"controller_id": letter.controller_id},
            )

    async def _connect_store(self) -> Store:
        delays = mqtt.backoff(first=0.2, cap=5.0)
        while True:
            try:
                return await Store.connect(self.url)
            except psycopg.OperationalError as exc:
                delay = next(delays)
                log.warning("database unreachable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    # --- what monitoring reads (ingest.probe) ------------------------------------------
    @property
    def mqtt_connected(self) -> bool:
        return self._link is not None and self._link.connected

    @property
    def pending_messages(self) -> int:
        return len(self.pending)

    def lag_s(self) -> float:
        """How long the oldest message not yet committed has waited (0: none waits)."""
        waiting = [t for t in (self._writing_since, self._pending_since) if t is not None]
        return time.monotonic() - min(waiting) if waiting else 0.0

    # --- ack ---------------------------------------------------------------------------
    async def _ack_forever(self) -> None:
        while True:
            await self._has_unacked.wait()
            await asyncio.sleep(self.settings.ack_max_delay_s)
            unacked, self._unacked = self._unacked, defaultdict(list)
            self._has_unacked.clear()
            self._send_acks(unacked)

    def _send_acks(self, unacked: dict[str, list[int]]) -> None:
        """Publish ``meter/ack`` (QoS 1) for committed batches, without awaiting each.

        paho completes each QoS 1 handshake on its own, and an ack that is lost only makes
        the edge resend a batch that the store's key absorbs.
        """
        link = self._link
        if link is None:
            return  # unacked batches are resent by the edge after its ack timeout
        sent = failed = 0
        now = self.settings.now()  # the cloud's time: the edges set their clocks by it
        for cid, seqs in unacked.items():
            topic = self.topics.meter_ack(cid)
            for start in range(0, max(len(seqs), 1), MAX_ACK_SEQS):  # none: the time alone
                chunk = tuple(seqs[start : start + MAX_ACK_SEQS])
                if link.publish(
                    topic, encode(MeterAck(controller_id=cid, seqs=chunk, at=now)), qos=1
                ):
                    sent += 1
                else:
                    failed += 1
        self.counters.acks += sent
        if failed:
            log.warning("%d meter acks not sent; the edges will resend those batches", failed)

    # --- registry ----------------------------------------------------------------------
    async def _registry_forever(self) -> None:
        async def follow(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute("LISTEN chargeline_registry")
            while True:
                assert self._triage is not None
                self._triage.registry = await RegistrySnapshot.load(conn)
                await self._wait_for_change(conn)

        await self._connected_forever("registry listener", follow, self.settings.registry_refresh_s)

    async def _connected_forever(
        self,
        what: str,
        work: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]],
        retry_s: float,
    ) -> None:
        """Run ``work`` on an autocommit connection of its own, reconnecting after errors."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    await work(conn)
            except psycopg.Error as exc:
                log.warning("%s lost the database (%s); retrying in %g s", what, exc, retry_s)
                await asyncio.sleep(retry_s)

    async def _wait_for_change(self, conn: psycopg.AsyncConnection[Any]) -> None:
        async for _ in conn.notifies(timeout=self.settings.registry_refresh_s, stop_after=1):
            log.info("registry changed; reloading")

    # --- heartbeat ----------------------------------------------------------------------
    def _heard_due(self, heard: set[str]) -> set[str]:
        """The controllers whose ``heard_at`` is worth updating in this write.

        Each is noted at most every third of ``silence_timeout_s``, which is enough for
        the silence check and spares the table a row update per controller per write.
        """
        now = time.monotonic()
        every = self.settings.silence_timeout_s / 3
        due = {cid for cid in heard if now - self._heard_noted.get(cid, -1e9) >= every}
        for cid in due:
            self._heard_noted[cid] = now
        return due

    async def _silence_forever(self) -> None:
        """Take controllers offline that have said nothing for ``silence_timeout_s``."""
        timeout = self.settings.silence_timeout_s
        every = min(5.0, timeout / 3)

        async def check(conn: psycopg.AsyncConnection[Any]) -> None:
            while True:
                await asyncio.sleep(every)
                async with conn.transaction():
                    silent = await status.fell_silent(conn, timeout_s=timeout)
                for cid in silent:
                    log.warning(
                        "%s: not heard from for %g s; offline",
                        cid,
                        timeout,
                        extra={"controller_id": cid},
                    )

        await self._connected_forever("silence check", check, every)

    async def _fleet_forever(self) -> None:
        """Read the fleet's state for the metrics every ``fleet_refresh_s``."""
        every = self.settings.fleet_refresh_s

        async def read(conn: psycopg.AsyncConnection[Any]) -> None:
            while True:
                row = await (await conn.execute(_FLEET)).fetchone()
                assert row is not None
                self.fleet = Fleet(*row)
                await asyncio.sleep(every)

        await self._connected_forever("fleet figures", read, every)

    async def _report_forever(self) -> None:
        while True:
            await asyncio.sleep(10)
            log.info("ingest totals: %s", self.counters.as_dict())

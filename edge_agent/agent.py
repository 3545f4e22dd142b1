"""The edge agent process: ``async with EdgeAgent(settings, …) as agent: await agent.run()``.

Tasks, over one MQTT connection that is re-established with growing, randomised delays:

* **sample** reads the meters every ``sample_interval_s`` (simulated seconds) and, at each
  minute boundary, turns the reading into a ``MeterFrame`` kept in the on-disk buffer.
* **link** holds the MQTT connection: birth/will presence and retained reported state on
  connect, then it sends every unacknowledged batch and listens for ``meter/ack``.
* **resend** sends again any batch not acknowledged within ``ack_timeout_s`` (the broker may
  drop QoS 1 messages, ingest may have been down); the store's key makes resends harmless.

Load management: the link subscribes to the controller's retained ``budget`` (enforced on
every sample by the executor) and **load** reports what it draws every ``load_report_s``.

Commands: the link also subscribes to each outlet's retained ``desired`` topic. Every
decision about a breaker is made by ``edge_agent.reconciler`` (read its theory of
operation) and carried out by ``edge_agent.executor``, which persists the memory before it
acknowledges; this module queues acknowledgements and events while offline. At start every
breaker is opened; the sampling loop also hands each sample to the executor (the
reconciler's timer for ``end_at`` and the over-current guard), so both work without the
cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from types import TracebackType
from typing import Self

import aiomqtt

from edge_agent import inbox
from edge_agent.buffer import FrameBuffer
from edge_agent.clock import ScaledClock
from edge_agent.drivers import BreakerDriver, MeterReader, Sample
from edge_agent.executor import Executor
from edge_agent.settings import EdgeSettings
from kernel import mqtt
from schemas.codec import encode
from schemas.messages import (
    MeterFrame,
    OutletReading,
    OutletState,
    Presence,
    ReportedState,
)

log = logging.getLogger(__name__)

#: How long after acks and events the retained reported state follows.
STATE_DELAY_S = 0.2
#: The least time between two load reports.
LOAD_REPORT_GAP_S = 0.2


def frame_from(sample: Sample, minute: int) -> MeterFrame:
    return MeterFrame(
        minute=minute,
        main_energy_wh=round(sample.main_energy_wh, 3),
        outlets=tuple(
            OutletReading(
                outlet=o.outlet,
                energy_wh=round(o.energy_wh, 3),
                voltage_v=o.voltage_v,
                current_a=o.current_a,
                breaker_on=o.breaker_on,
            )
            for o in sample.outlets
        ),
    )


class EdgeAgent:
    def __init__(
        self,
        settings: EdgeSettings,
        *,
        meter: MeterReader,
        breakers: BreakerDriver,
        clock: ScaledClock,
    ) -> None:
        if not settings.controller_id:
            raise ValueError("the edge agent needs a controller id (CHARGELINE_CONTROLLER_ID)")
        self.settings = settings
        self.cid = settings.controller_id
        self.meter = meter
        self.breakers = breakers
        self.clock = clock
        self.topics = settings.topics
        self.started_at = clock.now()
        self.buffer = FrameBuffer(
            settings.data_dir / "edge" / f"{self.cid}.sqlite",
            controller_id=self.cid,
            max_frames=settings.buffer_max_frames,
        )
        self._client: aiomqtt.Client | None = None
        self._sent_at: dict[int, float] = {}  # seq → monotonic time of the last send
        self.frames_made = 0
        self.connected = asyncio.Event()
        self._done = asyncio.Event()
        #: Acks and events waiting for the link: (topic, payload). Bounded; oldest go first.
        self._outbox: deque[tuple[str, bytes]] = deque(maxlen=1000)
        self._outbox_ready = asyncio.Event()
        self._state_changed = asyncio.Event()
        self.executor = Executor(
            settings, meter=meter, breakers=breakers, clock=clock, send=self._send
        )
        self._load_changed = asyncio.Event()
        self.executor.load_changed = self._load_changed.set

    async def __aenter__(self) -> Self:
        self.executor.open_all()  # safety rule 6
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.buffer.close()
        self.executor.close()

    async def run(self) -> None:
        """Run until cancelled, or with ``minutes`` set, until that many frames are acked."""
        async with asyncio.TaskGroup() as tasks:
            workers = [
                tasks.create_task(self._sample_forever(), name=f"{self.cid}-sample"),
                tasks.create_task(self._link_forever(), name=f"{self.cid}-link"),
                tasks.create_task(self._resend_forever(), name=f"{self.cid}-resend"),
                tasks.create_task(self._flush_outbox_forever(), name=f"{self.cid}-outbox"),
                tasks.create_task(self._state_forever(), name=f"{self.cid}-state"),
                tasks.create_task(self._report_load_forever(), name=f"{self.cid}-load"),
            ]
            await self._done.wait()
            for task in workers:
                task.cancel()
        log.info("%s: %d frames measured and acknowledged; stopping", self.cid, self.frames_made)

    # --- sampling ------------------------------------------------------------------------
    async def _sample_forever(self) -> None:
        interval = self.settings.sample_interval_s
        limit = self.settings.minutes
        next_minute = (int(self.clock.now()) // 60 + 1) * 60
        while limit is None or self.frames_made < limit:
            now = self.clock.now()
            sample = self.meter.read(now)
            self.executor.guard(sample)
            if now >= next_minute:
                await self._new_frame(frame_from(sample, next_minute))
                next_minute += 60
                continue
            await self.clock.sleep(min(interval, next_minute - now))

    async def _new_frame(self, frame: MeterFrame) -> None:
        self.buffer.add(frame)
        self.frames_made += 1
        if self.connected.is_set():
            await self._send_pending()

    # --- acks, events and state to the cloud ----------------------------------------------
    def _on_meter_ack(self, payload: bytes) -> None:
        ack = inbox.meter_ack(self.cid, payload)
        if ack is None:
            return
        if ack.at is not None:
            self.executor.learn_cloud_time(ack.at)
        freed = self.buffer.ack(ack.seqs) if ack.seqs else 0
        for seq in ack.seqs:
            self._sent_at.pop(seq, None)
        log.debug("%s: ack for %s freed %d frames", self.cid, ack.seqs, freed)
        self._check_done()

    def _send(self, topic: str, payload: bytes) -> None:
        """Queue an ack or event; the link publishes the queue whenever it is connected."""
        if len(self._outbox) == self._outbox.maxlen:
            log.warning("%s: outbox full; dropping the oldest ack or event", self.cid)
        self._outbox.append((topic, payload))
        self._outbox_ready.set()

    async def _flush_outbox_forever(self) -> None:
        while True:
            await self._outbox_ready.wait()
            await self.connected.wait()
            if await self._publish_outbox():
                self._outbox_ready.clear()
                self._state_changed.set()
            else:
                await asyncio.sleep(0.5)  # the link is reconnecting

    async def _report_load_forever(self) -> None:
        """Every ``load_report_s``, and at once (at most every ``LOAD_REPORT_GAP_S``) when a
        breaker moved or a charge queued, what this controller draws, for the site's
        allocator (QoS 0: the next one follows within seconds)."""
        interval = self.settings.load_report_s
        if interval <= 0:
            return
        topic = self.topics.load(self.cid)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._load_changed.wait(), interval)
            self._load_changed.clear()
            await asyncio.sleep(LOAD_REPORT_GAP_S)  # a burst of changes: one report
            client = self._client
            if client is None or not self.connected.is_set():
                continue
            report = self.executor.load_report(self.meter.read(self.clock.now()))
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(topic, encode(report), qos=0)

    async def _state_forever(self) -> None:
        """The retained state follows every change, a moment later: it is for operators,
        and an acknowledgement on its way to a waiting partner should have the CPU first."""
        while True:
            await self._state_changed.wait()
            await asyncio.sleep(STATE_DELAY_S)
            self._state_changed.clear()
            if self.connected.is_set():
                with contextlib.suppress(aiomqtt.MqttError):
                    await self._publish_state()

    async def _publish_outbox(self) -> bool:
        """Publish queued acks and events in order; False when the link failed midway."""
        while self._outbox:
            client = self._client
            if client is None:
                return False
            topic, payload = self._outbox[0]
            try:
                await client.publish(topic, payload, qos=1)
            except aiomqtt.MqttError:
                return False
            self._outbox.popleft()
        return True

    # --- the MQTT link -------------------------------------------------------------------
    async def _link_forever(self) -> None:
        delays = mqtt.backoff()
        url = self.settings.mqtt
        while True:
            since = self.clock.now()  # this connection's birth, in the edge's time
            will = aiomqtt.Will(
                self.topics.presence(self.cid),
                encode(
                    Presence(
                        controller_id=self.cid, online=False, since=since, reason="connection lost"
                    )
                ),
                qos=1,
                retain=True,
            )
            try:
                async with mqtt.client(
                    url,
                    identifier=self.cid,
                    will=will,
                    clean_session=True,
                    keepalive=30,
                    max_inflight_messages=100,
                ) as client:
                    self._client = client
                    await client.subscribe(self.topics.meter_ack(self.cid), qos=1)
                    await client.subscribe(self.topics.request(self.cid), qos=1)
                    await client.subscribe(self.topics.budget(self.cid), qos=1)
                    for n in self.executor.outlet_numbers:
                        await client.subscribe(self.topics.desired(self.cid, n), qos=1)
                    await client.publish(
                        self.topics.presence(self.cid),
                        encode(Presence(controller_id=self.cid, online=True, since=since)),
                        qos=1,
                        retain=True,
                    )
                    await self._publish_state()
                    delays = mqtt.backoff()
                    log.info("%s: connected to %r", self.cid, url)
                    self._sent_at.clear()
                    self.connected.set()
                    self._outbox_ready.set()
                    await self._send_pending()
                    try:
                        await self._listen(client)
                    except asyncio.CancelledError:
                        await self._say_offline(client, since)
                        raise
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self._client = None
                await mqtt.link_down(exc, url, delays, log, who=self.cid)

    async def _say_offline(self, client: aiomqtt.Client, since: float) -> None:
        """A clean stop: say so before disconnecting (a clean DISCONNECT discards the will,
        and the cloud should not wait for a heartbeat to time out). Best effort, 2 s."""
        offline = Presence(controller_id=self.cid, online=False, since=since, reason="stopped")
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            async with asyncio.timeout(2):
                await client.publish(
                    self.topics.presence(self.cid), encode(offline), qos=1, retain=True
                )
                log.info("%s: stopping; told the cloud", self.cid)

    async def _listen(self, client: aiomqtt.Client) -> None:
        desired = {self.topics.desired(self.cid, n): n for n in self.executor.outlet_numbers}
        handlers = {
            self.topics.meter_ack(self.cid): self._on_meter_ack,
            self.topics.request(self.cid): self.executor.on_status_request,
            self.topics.budget(self.cid): self.executor.on_budget,
        }
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                if topic in desired:
                    self.executor.on_desired(desired[topic], payload)
                elif topic in handlers:
                    handlers[topic](payload)
                else:
                    log.warning(
                        "%s: ignoring a message on %s, which it did not subscribe to",
                        self.cid,
                        topic[:200],
                    )
            except Exception:
                # One message must not stop the link (and with it every later OFF). The
                # handlers decode first, so what lands here is a fault of ours: logged in
                # full, the breakers left as they are, the next message read.
                log.exception("%s: handling a message on %s failed", self.cid, topic[:200])

    def _check_done(self) -> None:
        limit = self.settings.minutes
        if limit is not None and self.frames_made >= limit and len(self.buffer) == 0:
            self._done.set()

    async def _publish_state(self) -> None:
        if self._client is None:
            return
        outlets = tuple(
            OutletState(
                outlet=n,
                breaker_on=self.breakers.breaker_on(n),
                applied_generation=self.executor.memory[n].applied_generation,
            )
            for n in self.executor.outlet_numbers
        )
        state = ReportedState(
            controller_id=self.cid,
            firmware=self.settings.firmware,
            started_at=self.started_at,
            outlets=outlets,
        )
        await self._client.publish(self.topics.state(self.cid), encode(state), qos=1, retain=True)

    async def _send_pending(self, *, older_than: float | None = None) -> None:
        """Send batches not yet sent (or, with ``older_than``, sent before that time)."""
        client = self._client
        if client is None:
            return
        topic = self.topics.meter(self.cid)
        for batch in self.buffer.due(
            self._sent_at,
            now=self.clock.monotonic(),
            older_than=older_than,
            max_frames=self.settings.max_frames_per_message,
        ):
            try:
                await client.publish(topic, encode(batch), qos=1)
            except aiomqtt.MqttError as exc:
                log.warning("%s: batch %d not sent (%s); will resend", self.cid, batch.seq, exc)
                return

    async def _resend_forever(self) -> None:
        timeout = self.settings.ack_timeout_s
        while True:
            await asyncio.sleep(timeout / 2)
            if self.connected.is_set():
                with contextlib.suppress(aiomqtt.MqttError):
                    await self._send_pending(older_than=self.clock.monotonic() - timeout)

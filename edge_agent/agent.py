"""The edge agent process: ``async with EdgeAgent(settings, …) as agent: await agent.run()``.

Tasks, over one MQTT connection that is re-established with growing, randomised delays:

* **sample** reads the meters every ``sample_interval_s`` (simulated seconds) and, at each
  minute boundary, turns the reading into a ``MeterFrame`` kept in the on-disk buffer.
* **link** holds the MQTT connection: birth/will presence and retained reported state on
  connect, then it sends every unacknowledged batch and listens for ``meter/ack``.
* **resend** sends again any batch not acknowledged within ``ack_timeout_s`` (the broker may
  drop QoS 1 messages, ingest may have been down); the store's key makes resends harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from types import TracebackType
from typing import Self

import aiomqtt

from chargeline import mqtt
from chargeline.settings import EdgeSettings
from edge_agent.buffer import FrameBuffer
from edge_agent.clock import ScaledClock
from edge_agent.drivers import BreakerDriver, MeterReader, Sample
from schemas.codec import CodecError, decode, encode
from schemas.messages import (
    MeterAck,
    MeterBatch,
    MeterFrame,
    OutletReading,
    OutletState,
    Presence,
    ReportedState,
)

log = logging.getLogger(__name__)


def frame_from(sample: Sample, minute: int) -> MeterFrame:
    return MeterFrame(
        minute,
        round(sample.main_energy_wh, 3),
        tuple(
            OutletReading(o.outlet, round(o.energy_wh, 3), o.voltage_v, o.current_a, o.breaker_on)
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
            settings.data_dir / "edge" / f"{self.cid}.sqlite", max_frames=settings.buffer_max_frames
        )
        self._client: aiomqtt.Client | None = None
        self._sent_at: dict[int, float] = {}  # seq → monotonic time of the last send
        self.frames_made = 0
        self.connected = asyncio.Event()
        self._done = asyncio.Event()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.buffer.close()

    async def run(self) -> None:
        """Run until cancelled, or with ``minutes`` set, until that many frames are acked."""
        async with asyncio.TaskGroup() as tasks:
            workers = [
                tasks.create_task(self._sample_forever(), name=f"{self.cid}-sample"),
                tasks.create_task(self._link_forever(), name=f"{self.cid}-link"),
                tasks.create_task(self._resend_forever(), name=f"{self.cid}-resend"),
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
            if now >= next_minute:
                sample = self.meter.read(now)
                await self._new_frame(frame_from(sample, next_minute))
                next_minute += 60
                continue
            self.meter.read(now)
            await self.clock.sleep(min(interval, next_minute - now))

    async def _new_frame(self, frame: MeterFrame) -> None:
        self.buffer.add(frame)
        self.frames_made += 1
        if self.connected.is_set():
            await self._send_pending()

    # --- the MQTT link -------------------------------------------------------------------
    async def _link_forever(self) -> None:
        delays = mqtt.backoff()
        url = self.settings.mqtt
        while True:
            since = time.time()
            will = aiomqtt.Will(
                self.topics.presence(self.cid),
                encode(Presence(self.cid, False, since)),
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
                    await client.publish(
                        self.topics.presence(self.cid),
                        encode(Presence(self.cid, True, since)),
                        qos=1,
                        retain=True,
                    )
                    await self._publish_state()
                    delays = mqtt.backoff()
                    log.info("%s: connected to %r", self.cid, url)
                    self._sent_at.clear()
                    self.connected.set()
                    await self._send_pending()
                    await self._listen(client)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self._client = None
                delay = next(delays)
                log.warning("%s: MQTT link down (%s); retrying in %.1f s", self.cid, exc, delay)
                await asyncio.sleep(delay)

    async def _listen(self, client: aiomqtt.Client) -> None:
        ack_topic = self.topics.meter_ack(self.cid)
        async for message in client.messages:
            if message.topic.value != ack_topic:
                # amqtt has been seen delivering other controllers' retained topics here.
                log.warning(
                    "%s: ignoring a message on %s, which it did not subscribe to",
                    self.cid,
                    message.topic,
                )
                continue
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                ack = decode(MeterAck, payload)
            except CodecError as exc:
                log.warning("%s: ignoring bad message on %s: %s", self.cid, message.topic, exc)
                continue
            freed = self.buffer.ack(ack.seqs)
            for seq in ack.seqs:
                self._sent_at.pop(seq, None)
            log.debug("%s: ack for %s freed %d frames", self.cid, ack.seqs, freed)
            self._check_done()

    def _check_done(self) -> None:
        limit = self.settings.minutes
        if limit is not None and self.frames_made >= limit and len(self.buffer) == 0:
            self._done.set()

    async def _publish_state(self) -> None:
        if self._client is None:
            return
        outlets = tuple(
            OutletState(o.outlet, self.breakers.breaker_on(o.outlet), 0)
            for o in self.meter.read(self.clock.now()).outlets
        )
        state = ReportedState(self.cid, self.settings.firmware, self.started_at, outlets)
        await self._client.publish(self.topics.state(self.cid), encode(state), qos=1, retain=True)

    async def _send_pending(self, *, older_than: float | None = None) -> None:
        """Send batches not yet sent (or, with ``older_than``, sent before that time)."""
        client = self._client
        if client is None:
            return
        self.buffer.assign(self.settings.max_frames_per_message)
        topic = self.topics.meter(self.cid)
        for seq, frames in self.buffer.batches().items():
            last = self._sent_at.get(seq)
            if last is not None and (older_than is None or last > older_than):
                continue
            self._sent_at[seq] = time.monotonic()
            try:
                await client.publish(topic, encode(MeterBatch(self.cid, seq, frames)), qos=1)
            except aiomqtt.MqttError as exc:
                log.warning("%s: batch %d not sent (%s); will resend", self.cid, seq, exc)
                return

    async def _resend_forever(self) -> None:
        timeout = self.settings.ack_timeout_s
        while True:
            await asyncio.sleep(timeout / 2)
            if self.connected.is_set():
                with contextlib.suppress(aiomqtt.MqttError):
                    await self._send_pending(older_than=time.monotonic() - timeout)

"""The edge agent process: ``async with EdgeAgent(settings, …) as agent: await agent.run()``.

Tasks, over one MQTT connection that is re-established with growing, randomised delays:

* **sample** reads the meters every ``sample_interval_s`` (simulated seconds) and, at each
  minute boundary, turns the reading into a ``MeterFrame`` kept in the on-disk buffer.
* **link** holds the MQTT connection: birth/will presence and retained reported state on
  connect, then it sends every unacknowledged batch and listens for ``meter/ack``.
* **resend** sends again any batch not acknowledged within ``ack_timeout_s`` (the broker may
  drop QoS 1 messages, ingest may have been down); the store's key makes resends harmless.

Commands: the link also subscribes to each outlet's retained ``desired`` topic. Every
decision about a breaker is made by ``edge_agent.reconciler`` (read its theory of
operation); this module only executes the actions, persists the memory before it
acknowledges, and queues acknowledgements and events while offline. At start every breaker
is opened; the sampling loop also runs the reconciler's timer (``end_at``) and the
over-current guard, so both work without the cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from types import TracebackType
from typing import Self

import aiomqtt

from edge_agent import reconciler
from edge_agent.buffer import FrameBuffer
from edge_agent.clock import ScaledClock
from edge_agent.drivers import BreakerDriver, MeterReader, OutletSample, Sample
from edge_agent.memory import CommandMemory
from edge_agent.reconciler import Acknowledge, CloudClock, Decision, Limits, Report, Switch
from edge_agent.settings import EdgeSettings
from kernel import mqtt
from schemas.codec import CodecError, decode, encode
from schemas.messages import (
    CommandAck,
    DesiredState,
    EdgeEvent,
    EdgeEventKind,
    MeterAck,
    MeterBatch,
    MeterFrame,
    OutletReading,
    OutletState,
    Presence,
    ReportedState,
    StatusRequest,
)

log = logging.getLogger(__name__)

#: How long after acks and events the retained reported state follows.
STATE_DELAY_S = 0.2


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
            settings.data_dir / "edge" / f"{self.cid}.sqlite", max_frames=settings.buffer_max_frames
        )
        self._client: aiomqtt.Client | None = None
        self._sent_at: dict[int, float] = {}  # seq → monotonic time of the last send
        self.frames_made = 0
        self.connected = asyncio.Event()
        self._done = asyncio.Event()
        self.memory_store = CommandMemory(
            settings.data_dir / "edge" / f"{self.cid}.commands.sqlite"
        )
        self.outlet_numbers = range(1, settings.outlets + 1)
        self.memory = self.memory_store.load(self.outlet_numbers)
        #: Learned from this boot's meter acks only (reconciler rule 5).
        self.cloud_clock = CloudClock()
        #: Per outlet, an ON that arrived before the cloud clock was known.
        self._waiting: dict[int, DesiredState] = {}
        self.limits = Limits(start_max_age_s=settings.start_max_age_s)
        #: Outlets whose desired state has not been seen since boot (they stay OFF till then).
        self._restoring = set(self.outlet_numbers)
        self.current_limits = reconciler.CurrentLimits(
            overcurrent_a=settings.overcurrent_a,
            overcurrent_s=settings.overcurrent_s,
            levels_a=tuple(settings.current_event_levels_a),
        )
        #: Per outlet, the over-current timer and the levels reported (``watch_current``).
        self._watch = {n: reconciler.CurrentWatch() for n in self.outlet_numbers}
        #: Acks and events waiting for the link: (topic, payload). Bounded; oldest go first.
        self._outbox: deque[tuple[str, bytes]] = deque(maxlen=1000)
        self._outbox_ready = asyncio.Event()
        self._state_changed = asyncio.Event()

    async def __aenter__(self) -> Self:
        # Safety rule 6: after a (re)boot every breaker is OFF until reconciled.
        for n in self.outlet_numbers:
            self.breakers.switch(n, False)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.buffer.close()
        self.memory_store.close()

    async def run(self) -> None:
        """Run until cancelled, or with ``minutes`` set, until that many frames are acked."""
        async with asyncio.TaskGroup() as tasks:
            workers = [
                tasks.create_task(self._sample_forever(), name=f"{self.cid}-sample"),
                tasks.create_task(self._link_forever(), name=f"{self.cid}-link"),
                tasks.create_task(self._resend_forever(), name=f"{self.cid}-resend"),
                tasks.create_task(self._flush_outbox_forever(), name=f"{self.cid}-outbox"),
                tasks.create_task(self._state_forever(), name=f"{self.cid}-state"),
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
            self._guard(sample)
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

    # --- commands ------------------------------------------------------------------------
    def _guard(self, sample: Sample) -> None:
        """Run the reconciler's timer, the over-current guard and the current-rise report
        on every sample."""
        cloud_now = self.cloud_clock.cloud(sample.at)
        for o in sample.outlets:
            memory = self.memory.get(o.outlet)
            if memory is None:
                continue
            self._execute(reconciler.tick(memory, cloud_now=cloud_now))
            seen = reconciler.watch_current(
                self.memory[o.outlet],
                self._watch[o.outlet],
                at=sample.at,
                current_a=o.current_a,
                breaker_on=o.breaker_on,
                limits=self.current_limits,
            )
            self._watch[o.outlet] = seen.watch
            if seen.trip is not None:
                self._execute(seen.trip)
            if seen.crossed_a is not None:  # the fast path: seconds, not the next minute
                at = self.cloud_clock.stamp(sample.at)
                detail = f"rose through {seen.crossed_a:g} A"
                self._send_event(EdgeEventKind.CURRENT_CROSSED, o, at, detail=detail)

    def _send_event(
        self,
        kind: EdgeEventKind,
        o: OutletSample,
        at: float,
        *,
        detail: str,
        current_a: float | None = None,
        breaker_on: bool | None = None,
        generation: int | None = None,
    ) -> None:
        """Queue an ``EdgeEvent`` carrying the outlet's reading ``o`` (``at``: cloud time)."""
        event = EdgeEvent(
            controller_id=self.cid,
            at=at,
            kind=kind,
            outlet=o.outlet,
            generation=self.memory[o.outlet].applied_generation
            if generation is None
            else generation,
            current_a=o.current_a if current_a is None else current_a,
            breaker_on=o.breaker_on if breaker_on is None else breaker_on,
            detail=detail,
            energy_wh=round(o.energy_wh, 3),
            voltage_v=o.voltage_v,
        )
        self._send(self.topics.event(self.cid), encode(event))

    def _on_status_request(self, payload: bytes) -> None:
        """Answer a status request with a fresh sample of the outlet it names."""
        try:
            request = decode(StatusRequest, payload)
        except CodecError as exc:
            log.warning("%s: ignoring a bad status request: %s", self.cid, exc)
            return
        if request.controller_id != self.cid or request.outlet not in self.outlet_numbers:
            log.warning(
                "%s: ignoring a status request for %s/%d",
                self.cid,
                request.controller_id,
                request.outlet,
            )
            return
        sample = self.meter.read(self.clock.now())
        o = next(o for o in sample.outlets if o.outlet == request.outlet)
        at = self.cloud_clock.stamp(sample.at)
        self._send_event(EdgeEventKind.STATUS, o, at, detail=request.request_id)

    def _on_desired(self, outlet: int, payload: bytes) -> None:
        try:
            want = decode(DesiredState, payload)
        except CodecError as exc:
            log.warning("%s: ignoring a bad desired state for outlet %d: %s", self.cid, outlet, exc)
            return
        if want.controller_id != self.cid or want.outlet != outlet:
            log.warning(
                "%s: ignoring a desired state addressed to %s/%d on outlet %d's topic",
                self.cid,
                want.controller_id,
                want.outlet,
                outlet,
            )
            return
        self._decide(outlet, want)

    def _decide(self, outlet: int, want: DesiredState) -> None:
        restoring = outlet in self._restoring
        decision = reconciler.desired(
            self.memory[outlet],
            want,
            cloud_now=self.cloud_clock.cloud(self.clock.now()),
            limits=self.limits,
            restoring=restoring,
        )
        if decision.waiting:
            if outlet not in self._waiting:
                log.info(
                    "%s: outlet %d: ON (generation %d) waits for the cloud's time"
                    " (the first meter ack); the breaker stays OFF",
                    self.cid,
                    outlet,
                    want.generation,
                )
            self._waiting[outlet] = want
            return
        self._waiting.pop(outlet, None)
        self._restoring.discard(outlet)
        self._execute(decision)

    def _on_meter_ack(self, payload: bytes) -> None:
        try:
            ack = decode(MeterAck, payload)
        except CodecError as exc:
            log.warning("%s: ignoring a bad meter ack: %s", self.cid, exc)
            return
        if ack.controller_id != self.cid:
            log.warning("%s: ignoring a meter ack for %s", self.cid, ack.controller_id)
            return
        if ack.at is not None:
            was_known = self.cloud_clock.known
            self.cloud_clock.learn(ack.at, self.clock.now())
            if not was_known:
                log.info(
                    "%s: cloud clock learned: offset %+.1f s from this edge's clock",
                    self.cid,
                    self.cloud_clock.offset,
                )
            for outlet, want in list(self._waiting.items()):
                self._decide(outlet, want)
            # A better estimate of the cloud's time may put a charge past its stop time:
            # stop it now rather than at the next sample.
            cloud_now = self.cloud_clock.cloud(self.clock.now())
            for memory in list(self.memory.values()):
                self._execute(reconciler.tick(memory, cloud_now=cloud_now))
        freed = self.buffer.ack(ack.seqs) if ack.seqs else 0
        for seq in ack.seqs:
            self._sent_at.pop(seq, None)
        log.debug("%s: ack for %s freed %d frames", self.cid, ack.seqs, freed)
        self._check_done()

    def _execute(self, decision: Decision) -> None:
        """Switch, persist, then acknowledge and report: in that order."""
        memory = decision.memory
        self._remember(memory)
        for action in decision.actions:
            if isinstance(action, Switch):
                feedback = self.breakers.switch(action.outlet, action.on)
                log.info(
                    "%s: outlet %d breaker %s (feedback %s)",
                    self.cid,
                    action.outlet,
                    "ON" if action.on else "OFF",
                    "ON" if feedback else "OFF",
                )
                if action.on and feedback:
                    self._watch[action.outlet] = reconciler.breaker_closed(
                        self._watch[action.outlet]
                    )
                after = reconciler.switched(memory, action, feedback=feedback)
                memory = after.memory
                self._remember(memory)
                self._execute(Decision(memory, after.actions))
            elif isinstance(action, Acknowledge):
                sample = self.meter.read(self.clock.now())
                ack = CommandAck(
                    controller_id=self.cid,
                    outlet=action.outlet,
                    generation=action.generation,
                    outcome=action.outcome,
                    breaker_on=self.breakers.breaker_on(action.outlet),
                    at=self.cloud_clock.stamp(sample.at),
                    energy_wh=next(
                        o.energy_wh for o in sample.outlets if o.outlet == action.outlet
                    ),
                )
                self._send(self.topics.ack(self.cid), encode(ack))
            elif isinstance(action, Report):
                sample = self.meter.read(self.clock.now())
                o = next(o for o in sample.outlets if o.outlet == action.outlet)
                log.info(
                    "%s: outlet %d %s: %s",
                    self.cid,
                    action.outlet,
                    action.kind.value,
                    action.detail,
                )
                self._send_event(
                    action.kind,
                    o,
                    self.cloud_clock.stamp(sample.at),
                    detail=action.detail,
                    current_a=action.current_a,
                    breaker_on=self.breakers.breaker_on(action.outlet),
                    generation=action.generation,
                )

    def _remember(self, memory: reconciler.OutletMemory) -> None:
        if self.memory.get(memory.outlet) != memory:
            self.memory_store.save(memory)
            self.memory[memory.outlet] = memory

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
                    for n in self.outlet_numbers:
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
                delay = next(delays)
                log.warning(
                    "%s: MQTT link down (%s%s); retrying in %.1f s",
                    self.cid,
                    exc,
                    mqtt.refusal_hint(exc, url.username),
                    delay,
                )
                await asyncio.sleep(delay)

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
        desired = {self.topics.desired(self.cid, n): n for n in self.outlet_numbers}
        handlers = {
            self.topics.meter_ack(self.cid): self._on_meter_ack,
            self.topics.request(self.cid): self._on_status_request,
        }
        async for message in client.messages:
            topic = message.topic.value
            payload = message.payload if isinstance(message.payload, bytes) else b""
            try:
                if topic in desired:
                    self._on_desired(desired[topic], payload)
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
                applied_generation=self.memory[n].applied_generation,
            )
            for n in self.outlet_numbers
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
        self.buffer.assign(self.settings.max_frames_per_message)
        topic = self.topics.meter(self.cid)
        for seq, frames in self.buffer.batches().items():
            last = self._sent_at.get(seq)
            if last is not None and (older_than is None or last > older_than):
                continue
            self._sent_at[seq] = self.clock.monotonic()
            try:
                await client.publish(
                    topic, encode(MeterBatch(controller_id=self.cid, seq=seq, frames=frames)), qos=1
                )
            except aiomqtt.MqttError as exc:
                log.warning("%s: batch %d not sent (%s); will resend", self.cid, seq, exc)
                return

    async def _resend_forever(self) -> None:
        timeout = self.settings.ack_timeout_s
        while True:
            await asyncio.sleep(timeout / 2)
            if self.connected.is_set():
                with contextlib.suppress(aiomqtt.MqttError):
                    await self._send_pending(older_than=self.clock.monotonic() - timeout)

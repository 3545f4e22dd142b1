"""One OCPP station as one controller: what an edge agent does, on a station's messages.

For each registered station the bridge keeps a ``Station``. It speaks chargeline's wire
contract for it, exactly as ``edge_agent`` does for a controller, and shares the edge's
parts rather than copying them:

- **readings**: each connector's samples (``MeterValues``, ``TransactionEvent``) go
  through the ``MinuteFramer`` into minute frames, kept in the edge's on-disk
  ``FrameBuffer`` until ``meter/ack`` names their batch, and resent until then;
- **commands**: every desired state is judged by the edge's pure ``reconciler`` (stale,
  replayed and expired states, the start age limit, the cloud clock learned from
  ``meter/ack``, the ``end_at`` timer) with the edge's ``CommandMemory`` on disk. Where a
  controller switches a breaker, a station is asked: ON is RemoteStartTransaction (1.6) /
  RequestStartTransaction (2.0.1) and counts as done once the station accepted *and* its
  transaction started; OFF is RemoteStop/RequestStopTransaction and is done when the
  transaction ended (``Link``). A "breaker" is ON while a transaction runs on the connector;
- **events**: a current rising through a level (``reconciler.watch_current``), a connector
  reported ``Faulted``, status answers;
- **state and presence**: the connectors' transactions and applied generations; online
  while its WebSocket is open.

Commands run one at a time per station (a task reading ``_work``), so one OCPP call is in
flight per station and the memory is never stepped by two decisions at once. Nothing here
blocks a message handler: handlers call the ``on_…`` methods, which only file facts and
queue work.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, Protocol

from edge_agent import budget, inbox, reconciler
from edge_agent.buffer import FrameBuffer
from edge_agent.clock import Clock
from edge_agent.memory import BudgetKeeper, CommandMemory
from edge_agent.reconciler import Acknowledge, Decision, Report, Switch
from ocpp_bridge.minutes import MinuteFramer
from ocpp_bridge.readings import Sample
from schemas.codec import encode
from schemas.messages import (
    CommandAck,
    CommandOutcome,
    DesiredState,
    EdgeEvent,
    EdgeEventKind,
    LoadReport,
    OutletLoad,
    OutletReading,
    OutletState,
    Presence,
    ReportedState,
)
from schemas.topics import Topics

log = logging.getLogger(__name__)

#: What a station's command queue runs, one at a time: a reconciler decision to carry out,
#: or a call of its own (a charging profile).
Work = Callable[[], "Decision | Coroutine[Any, Any, None] | None"]

#: Longest a card's transaction holds back minute frames while its charge is recorded.
HOLD_FRAMES_S = 30.0
#: A station protects itself against over-current; the edge's local trip is not used.
_NO_TRIP = 1e9


@dataclass(frozen=True, slots=True)
class Connector:
    outlet: int
    evse: int
    connector: int
    current_type: str = "AC"
    outlet_id: str = ""
    #: What the connector draws at most (the registry's rated current), for load management.
    max_a: float = 32.0


@dataclass(frozen=True, slots=True)
class StationInfo:
    station_id: str
    controller_id: str
    ocpp_version: str
    connectors: tuple[Connector, ...]

    def by_outlet(self, outlet: int) -> Connector | None:
        return next((c for c in self.connectors if c.outlet == outlet), None)

    def outlet_of(self, *, evse: int | None = None, connector: int | None = None) -> int | None:
        """The outlet of a 1.6 connectorId (``connector``) or a 2.0.1 EVSE (and connector)."""
        for c in self.connectors:
            if self.ocpp_version == "1.6":
                if connector == c.connector:
                    return c.outlet
            elif evse == c.evse and connector in (None, c.connector):
                return c.outlet
        return None


@dataclass(slots=True)
class Transaction:
    transaction_id: str
    outlet: int
    started_at: float
    meter_start_wh: float | None
    id_tag: str | None = None
    remote: bool = False
    stopped_at: float | None = None
    meter_stop_wh: float | None = None
    stop_reason: str | None = None


class Link(Protocol):
    """A station's open OCPP connection, as a station's commands need it."""

    async def remote_start(self, connector: Connector, id_tag: str, remote_id: int) -> bool:
        """Ask the station to start; True when it accepted."""
        ...

    async def remote_stop(self, transaction_id: str) -> bool:
        """Ask the station to stop a transaction; True when it accepted."""
        ...

    async def set_limit(self, amps: float, profile_id: int) -> bool:
        """Limit what the whole station draws (a station-wide charging profile); True when
        it accepted."""
        ...


class CallFailed(Exception):
    """The station did not answer a call in time, or answered with a CALLERROR."""


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    topics: Topics
    start_max_age_s: float = 120.0
    #: How long a started transaction (or an ended one) may take after the station accepted.
    transaction_wait_s: float = 10.0
    current_levels_a: tuple[float, ...] = (1.0, 2.0, 4.0, 6.0, 10.0)
    buffer_max_frames: int = 7 * 24 * 60
    max_frames_per_message: int = 60
    #: Load management: seconds between load reports (bridge ticks), and the least current a
    #: connector charges at (below it the station is limited to 0 A: paused).
    load_report_s: float = 5.0
    min_station_a: float = 6.0


@dataclass
class Facts:
    """What the station told, per connector: readings, status, transactions."""

    latest: dict[int, OutletReading] = field(default_factory=dict)
    status: dict[int, str] = field(default_factory=dict)
    active: dict[int, Transaction] = field(default_factory=dict)
    #: outlet → event set when a transaction starts or ends there.
    changed: dict[int, asyncio.Event] = field(default_factory=dict)

    def reading(self, outlet: int) -> OutletReading:
        known = self.latest.get(outlet)
        on = outlet in self.active
        if known is None:
            return OutletReading(outlet, 0.0, 0.0, 0.0, on)
        return known._replace(breaker_on=on)


class Station:
    def __init__(
        self,
        info: StationInfo,
        settings: Settings,
        *,
        clock: Clock,
        send: Callable[[str, bytes, bool], None],
        record: Callable[[Transaction, str], None] = lambda t, cid: None,
        started_locally: Callable[[Station, Transaction], None] = lambda s, t: None,
    ) -> None:
        self.info = info
        self.cid = info.controller_id
        self.settings = settings
        self.topics = settings.topics
        self.clock = clock
        self._send = send
        self._record = record
        self._started_locally = started_locally
        #: Charges recorded for transactions the station started itself (a card): their
        #: desired ON only confirms a running transaction, never asks for a new one.
        self.local_charges: set[str] = set()
        folder = settings.data_dir / "ocpp"
        # Thousands of stations in one event loop: an fsync per minute each would stall it
        # at every minute's burst (bench.ocpp). Their minutes survive the bridge crashing.
        self.buffer = FrameBuffer(
            folder / f"{self.cid}.sqlite",
            controller_id=self.cid,
            max_frames=settings.buffer_max_frames,
            durable=False,
        )
        self.memory_store = CommandMemory(folder / f"{self.cid}.commands.sqlite")
        self.outlet_numbers = tuple(c.outlet for c in info.connectors)
        self.memory = {
            n: m for n, m in self.memory_store.load(range(1, 9)).items() if n in self.outlet_numbers
        }
        self.cloud_clock = reconciler.CloudClock()
        self.limits = reconciler.Limits(start_max_age_s=settings.start_max_age_s)
        self.current_limits = reconciler.CurrentLimits(
            overcurrent_a=_NO_TRIP, overcurrent_s=0.0, levels_a=settings.current_levels_a
        )
        self._watch = {n: reconciler.CurrentWatch() for n in self.outlet_numbers}
        self._restoring = set(self.outlet_numbers)
        self._waiting: dict[int, DesiredState] = {}
        self.framer = MinuteFramer()
        self.facts = Facts()
        self.link: Link | None = None
        self.firmware = "unknown"
        self.started_at = clock.now()
        #: Tags this bridge gave for remote starts: a station may Authorize them.
        self.remote_tags: set[str] = set()
        self._sent_at: dict[int, float] = {}
        self._hold_frames_until = 0.0
        self._work: asyncio.Queue[Work] = asyncio.Queue()
        self.failures: dict[str, int] = {"rejected": 0, "timed_out": 0, "offline": 0}
        # Load management: the budget, the limit the station last accepted (None: none since
        # it connected), the outlets paused by a limit below a connector's minimum.
        self.budget = BudgetKeeper(self.memory_store, max_age_s=settings.start_max_age_s)
        self.sent_limit: float | None = None
        self._limit_pending = False
        self._paused: set[int] = set()
        self._ticks = 0
        self._profile_ids = itertools.count(1)

    def close(self) -> None:
        self.buffer.close()
        self.memory_store.close()

    # --- the connection --------------------------------------------------------------------
    def connected(self, link: Link) -> None:
        self.link = link
        self.sent_limit = None  # a station's profile is sent again on every connection
        self._publish(
            self.topics.presence(self.cid),
            encode(Presence(controller_id=self.cid, online=True, since=self.clock.now())),
            retain=True,
        )
        self.publish_state()
        self.send_pending()

    def disconnected(self, reason: str) -> None:
        self.link = None
        for event in self.facts.changed.values():
            event.set()  # a command waiting on a transaction learns the link is gone
        self._publish(
            self.topics.presence(self.cid),
            encode(
                Presence(
                    controller_id=self.cid, online=False, since=self.clock.now(), reason=reason
                )
            ),
            retain=True,
        )

    # --- what the station says (called from message handlers: no waiting) ----------------
    def on_boot(self, vendor: str, model: str, firmware: str | None) -> None:
        self.firmware = f"{vendor} {model} {firmware or ''}".strip()[:200]
        self.publish_state()

    def on_status(self, outlet: int, status: str, error: str | None = None) -> None:
        before = self.facts.status.get(outlet)
        self.facts.status[outlet] = status
        if status == "Faulted" and before != "Faulted":
            detail = f"station reports Faulted ({error or 'no error code'})"
            self._event(EdgeEventKind.BREAKER_FAILED, outlet, detail)

    def on_sample(self, outlet: int, sample: Sample) -> None:
        """One connector's sample: the minute frames, and the current-rise fast path."""
        previous = self.facts.reading(outlet)
        reading = OutletReading(
            outlet=outlet,
            energy_wh=round(sample.energy_wh, 3)
            if sample.energy_wh is not None
            else previous.energy_wh,
            voltage_v=sample.voltage_v if sample.voltage_v is not None else previous.voltage_v,
            current_a=sample.current_a if sample.current_a is not None else 0.0,
            breaker_on=outlet in self.facts.active,
            power_w=sample.power_w,
            soc_percent=sample.soc_percent,
        )
        self.facts.latest[outlet] = reading
        frames = self.framer.add(sample.at, reading)
        for frame in frames:
            self.buffer.add(frame)
        if frames:
            self.send_pending()
        memory = self.memory.get(outlet)
        if memory is None or self.clock.monotonic() < self._hold_frames_until:
            return  # (a card's charge not yet on: its rise is reported once it is)
        seen = reconciler.watch_current(
            memory,
            self._watch[outlet],
            at=sample.at,
            current_a=reading.current_a,
            breaker_on=reading.breaker_on,
            limits=self.current_limits,
        )
        self._watch[outlet] = seen.watch
        if seen.crossed_a is not None:
            self._event(EdgeEventKind.CURRENT_CROSSED, outlet, f"rose through {seen.crossed_a:g} A")

    def on_transaction_started(self, transaction: Transaction) -> None:
        outlet = transaction.outlet
        self.facts.active[outlet] = transaction
        if self.sent_limit == 0:  # it starts turned down to nothing: paused (said once it is on)
            self._paused.add(outlet)
        if transaction.meter_start_wh is not None:
            reading = self.facts.reading(outlet)
            self.facts.latest[outlet] = reading._replace(energy_wh=transaction.meter_start_wh)
        self._watch[outlet] = reconciler.breaker_closed(self._watch[outlet])
        self._record(transaction, self.cid)
        self._changed(outlet)
        self.publish_state()
        if not transaction.remote:
            # The card's charge is recorded in the cloud in a moment. Until its ON is
            # applied, minute frames wait in the buffer and no current rise is reported:
            # the car's current seen before the charge is on would spend its rise webhook.
            self._hold_frames_until = self.clock.monotonic() + HOLD_FRAMES_S
            self._started_locally(self, transaction)

    def on_transaction_ended(
        self, transaction_id: str, *, at: float, meter_stop_wh: float | None, reason: str | None
    ) -> Transaction | None:
        for outlet, t in list(self.facts.active.items()):
            if t.transaction_id == transaction_id:
                ended = replace(t, stopped_at=at, meter_stop_wh=meter_stop_wh, stop_reason=reason)
                del self.facts.active[outlet]
                if meter_stop_wh is not None:
                    reading = self.facts.reading(outlet)
                    self.facts.latest[outlet] = reading._replace(energy_wh=meter_stop_wh)
                self._record(ended, self.cid)
                self._changed(outlet)
                self.publish_state()
                memory = self.memory.get(outlet)
                if memory is not None and memory.on:
                    # The station (or a resident) ended it: the edge reports a breaker that
                    # opened on its own, and forgets the charge's timer.
                    self._remember(replace(memory, on=False, stop_at=None))
                    self._event(
                        EdgeEventKind.BREAKER_SWITCHED, outlet, f"station stopped: {reason}"
                    )
                return ended
        return None

    def transaction(self, transaction_id: str) -> Transaction | None:
        return next(
            (t for t in self.facts.active.values() if t.transaction_id == transaction_id), None
        )

    def _changed(self, outlet: int) -> None:
        self.facts.changed.setdefault(outlet, asyncio.Event()).set()

    # --- what the cloud says ---------------------------------------------------------------
    def on_meter_ack(self, payload: bytes) -> None:
        ack = inbox.meter_ack(self.cid, payload)
        if ack is None:
            return
        if ack.at is not None:
            self.cloud_clock.learn(ack.at, self.clock.now())
            self._queue(self._judge_waiting)
            if self.budget.retry(cloud_now=self.cloud_clock.cloud(self.clock.now())):
                self._check_limit()
        if ack.seqs:
            self.buffer.ack(ack.seqs)
            for seq in ack.seqs:
                self._sent_at.pop(seq, None)

    def on_desired(self, outlet: int, payload: bytes) -> None:
        want = inbox.desired(self.cid, outlet, payload, self.memory)
        if want is not None:
            self._queue(partial(self._decide, outlet, want))

    def on_budget(self, payload: bytes) -> None:
        got = inbox.budget(self.cid, payload)
        now = self.cloud_clock.cloud(self.clock.now())
        if got is not None and self.budget.receive(got, cloud_now=now):
            self._check_limit()

    def limit(self) -> budget.Limit:
        return self.budget.limit(
            cloud_now=self.cloud_clock.cloud(self.clock.now()), safe_share_a=None
        )

    def _check_limit(self) -> None:
        """Queue a new charging profile when the limit in force changed (a budget, its
        expiry, a reconnection)."""
        amps = self.limit().amps
        if amps is None or self.link is None or self._limit_pending:
            return
        amps = self._usable(amps)
        if self.sent_limit is None or abs(amps - self.sent_limit) >= 0.5:
            self._limit_pending = True
            self._queue(self._limit_call)

    def _usable(self, amps: float) -> float:
        """A limit below the least a charging connector runs at is 0 A (paused)."""
        return round(amps, 1) if amps >= self.settings.min_station_a else 0.0

    async def _limit_call(self) -> None:
        try:
            lim = self.limit()
            link = self.link
            if lim.amps is None or link is None:
                return
            amps = self._usable(lim.amps)
            try:
                accepted = await link.set_limit(amps, next(self._profile_ids))
            except CallFailed as exc:
                log.warning("%s: charging profile of %g A not answered: %s", self.cid, amps, exc)
                return
            if not accepted:
                log.warning("%s: the station refused a charging profile of %g A", self.cid, amps)
                return
            log.info("%s: limited to %g A (%s)", self.cid, amps, lim.why)
            self.sent_limit = amps
            self._paused_by_limit(amps, lim)
        finally:
            self._limit_pending = False

    def _paused_by_limit(self, amps: float, lim: budget.Limit) -> None:
        """A station turned down to 0 A pauses its charges; one given current again resumes
        them (turned down but above 0, a charge goes on, slower)."""
        charging = {n for n, m in self.memory.items() if m.on and n in self.facts.active}
        reason = "site capacity" if lim.admit is not None else "safe share: no valid budget"
        if amps <= 0:
            for n in sorted(charging - self._paused):
                self._event(EdgeEventKind.PAUSED, n, reason)
            self._paused |= charging
        else:
            for n in sorted(self._paused & charging):
                self._event(EdgeEventKind.RESUMED, n, lim.why)
            self._paused.clear()

    def load_report(self) -> LoadReport:
        return LoadReport(
            controller_id=self.cid,
            at=self.cloud_clock.stamp(self.clock.now()),
            budget_version=self.budget.memory.version,
            modulating=True,
            main_current_a=None,
            outlets=tuple(
                OutletLoad(
                    outlet=c.outlet,
                    current_a=self.facts.reading(c.outlet).current_a,
                    wants=self.memory[c.outlet].on,
                    running=c.outlet in self.facts.active,
                    max_a=c.max_a,
                    charge_id=self.memory[c.outlet].charge_id if self.memory[c.outlet].on else None,
                )
                for c in self.info.connectors
            ),
        )

    def on_status_request(self, payload: bytes) -> None:
        request = inbox.status_request(self.cid, payload, self.memory)
        if request is not None:
            self._event(EdgeEventKind.STATUS, request.outlet, request.request_id)

    def tick(self) -> None:
        """Once a second: frames of minutes nobody will add to, and the reconciler's
        ``end_at`` timer for every outlet with a charge on."""
        frames = self.framer.idle(self.clock.now())
        for frame in frames:
            self.buffer.add(frame)
        if frames:
            self.send_pending()
        for outlet, memory in self.memory.items():
            if memory.on:
                self._queue(partial(self._tick, outlet))
        self._check_limit()
        self._ticks += 1
        every = max(1, round(self.settings.load_report_s))
        if self.link is not None and self.settings.load_report_s > 0 and self._ticks % every == 0:
            self._publish(self.topics.load(self.cid), encode(self.load_report()))

    # --- commands, one at a time -----------------------------------------------------------
    def _queue(self, work: Work) -> None:
        self._work.put_nowait(work)

    async def run_commands(self) -> None:
        while True:
            work = await self._work.get()
            try:
                decision = work()
                if isinstance(decision, Coroutine):
                    await decision  # a call of its own (a charging profile)
                elif decision is not None:
                    await self._execute(decision)
            except Exception:
                log.exception("%s: a command failed; the next one is read", self.cid)

    def _tick(self, outlet: int) -> Decision:
        return reconciler.tick(
            self.memory[outlet], cloud_now=self.cloud_clock.cloud(self.clock.now())
        )

    def _judge_waiting(self) -> None:
        for outlet, want in list(self._waiting.items()):
            self._queue(partial(self._decide, outlet, want))
        self._waiting.clear()

    def _decide(self, outlet: int, want: DesiredState) -> Decision | None:
        decision = reconciler.desired(
            self.memory[outlet],
            want,
            cloud_now=self.cloud_clock.cloud(self.clock.now()),
            limits=self.limits,
            restoring=outlet in self._restoring,
        )
        if decision.waiting:
            if outlet not in self._waiting:
                log.info(
                    "%s: outlet %d: ON (generation %d) waits for the cloud's time",
                    self.cid,
                    outlet,
                    want.generation,
                )
            self._waiting[outlet] = want
            return None
        self._waiting.pop(outlet, None)
        self._restoring.discard(outlet)
        return decision

    async def _execute(self, decision: Decision) -> None:
        """Ask, persist, then acknowledge and report: the edge's order."""
        memory = decision.memory
        self._remember(memory)
        for action in decision.actions:
            if isinstance(action, Switch):
                feedback, why = await self._switch(action)
                log.info(
                    "%s: outlet %d %s: transaction %s%s",
                    self.cid,
                    action.outlet,
                    "ON" if action.on else "OFF",
                    "running" if feedback else "none",
                    f" ({why})" if why else "",
                )
                after = reconciler.switched(memory, action, feedback=feedback)
                memory = after.memory
                self._remember(memory)
                if why in {"timed_out", "offline"}:
                    # No answer to give: the partner hears of it from the gateway's start
                    # time-out (or the station's offline presence), never from us.
                    continue
                actions = tuple(
                    replace(a, detail=why)
                    if isinstance(a, Report) and why and a.kind is EdgeEventKind.BREAKER_FAILED
                    else a
                    for a in after.actions
                )
                await self._execute(Decision(memory, actions))
            elif isinstance(action, Acknowledge):
                self._acknowledge(action)
            elif isinstance(action, Report):
                self._event(action.kind, action.outlet, action.detail, generation=action.generation)

    async def _switch(self, switch: Switch) -> tuple[bool, str]:
        """Carry out a Switch on the station: (is a transaction running now, why not)."""
        outlet = switch.outlet
        running = outlet in self.facts.active
        if running == switch.on:
            if running:
                # An ON for a transaction already running (a card's charge, recorded after
                # it began): its current counts from now, as after a breaker closing.
                self._watch[outlet] = reconciler.breaker_closed(self._watch[outlet])
            return running, ""
        link, connector = self.link, self.info.by_outlet(outlet)
        if link is None or connector is None:
            self.failures["offline"] += 1
            return running, "offline"
        memory = self.memory[outlet]
        if switch.on and memory.charge_id in self.local_charges:
            # Recorded for a transaction the station ran on its own, which has ended since:
            # a card's charge is never started again from the cloud.
            return running, "the station's own transaction had already ended"
        wait = self.facts.changed.setdefault(outlet, asyncio.Event())
        wait.clear()
        try:
            if switch.on:
                tag = _remote_tag(self.cid, memory.applied_generation)
                self.remote_tags.add(tag)
                accepted = await link.remote_start(connector, tag, memory.applied_generation)
                verb = (
                    "RemoteStartTransaction"
                    if self.info.ocpp_version == "1.6"
                    else "RequestStartTransaction"
                )
            else:
                accepted = await link.remote_stop(self.facts.active[outlet].transaction_id)
                verb = (
                    "RemoteStopTransaction"
                    if self.info.ocpp_version == "1.6"
                    else "RequestStopTransaction"
                )
        except CallFailed as exc:
            log.warning("%s: outlet %d: %s", self.cid, outlet, exc)
            self.failures["timed_out"] += 1
            return outlet in self.facts.active, "timed_out"
        if not accepted:
            self.failures["rejected"] += 1
            return outlet in self.facts.active, f"{verb} rejected by the station"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.settings.transaction_wait_s):
                while (outlet in self.facts.active) != switch.on and self.link is not None:
                    await wait.wait()
                    wait.clear()
        running = outlet in self.facts.active
        if running != switch.on:
            self.failures["timed_out"] += 1
            what = "started" if switch.on else "ended"
            log.warning("%s: outlet %d: accepted, but no transaction %s", self.cid, outlet, what)
            return running, "timed_out"
        return running, ""

    def _acknowledge(self, action: Acknowledge) -> None:
        reading = self.facts.reading(action.outlet)
        running = self.facts.active.get(action.outlet)
        if running is not None and running.meter_start_wh is not None and reading.breaker_on:
            # A charge's energy counts from its transaction's own meterStart.
            reading = reading._replace(energy_wh=running.meter_start_wh)
        ack = CommandAck(
            controller_id=self.cid,
            outlet=action.outlet,
            generation=action.generation,
            outcome=action.outcome,
            breaker_on=reading.breaker_on,
            at=self.cloud_clock.stamp(self.clock.now()),
            energy_wh=reading.energy_wh,
        )
        self._publish(self.topics.ack(self.cid), encode(ack))
        if action.outcome is not CommandOutcome.STALE:
            self.publish_state()
        if action.outcome is CommandOutcome.APPLIED and running and action.outlet in self._paused:
            # It started turned down to 0 A: charging, but paused for the site's cap.
            self._event(EdgeEventKind.PAUSED, action.outlet, "site capacity")
        self.release_frames()

    def release_frames(self) -> None:
        """Frames held for a card's charge go now (its ON was answered, or not recorded)."""
        if self._hold_frames_until:
            self._hold_frames_until = 0.0
            self.send_pending()

    def _remember(self, memory: reconciler.OutletMemory) -> None:
        if self.memory.get(memory.outlet) != memory:
            self.memory_store.save(memory)
            self.memory[memory.outlet] = memory

    # --- to the cloud ----------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self._send(topic, payload, retain)

    def _event(
        self, kind: EdgeEventKind, outlet: int, detail: str, *, generation: int | None = None
    ) -> None:
        reading = self.facts.reading(outlet)
        memory = self.memory.get(outlet)
        event = EdgeEvent(
            controller_id=self.cid,
            at=self.cloud_clock.stamp(self.clock.now()),
            kind=kind,
            outlet=outlet,
            generation=generation
            if generation is not None
            else (memory.applied_generation if memory else 0),
            current_a=reading.current_a,
            breaker_on=reading.breaker_on,
            detail=detail[:200],
            energy_wh=reading.energy_wh,
            voltage_v=reading.voltage_v,
        )
        self._publish(self.topics.event(self.cid), encode(event))

    def publish_state(self) -> None:
        outlets = tuple(
            OutletState(
                outlet=n,
                breaker_on=n in self.facts.active,
                applied_generation=self.memory[n].applied_generation,
            )
            for n in self.outlet_numbers
        )
        state = ReportedState(
            controller_id=self.cid,
            firmware=self.firmware,
            started_at=self.started_at,
            outlets=outlets,
        )
        self._publish(self.topics.state(self.cid), encode(state), retain=True)

    def send_pending(self, *, older_than: float | None = None) -> None:
        """Send batches not yet sent (or, with ``older_than``, sent before that time)."""
        if self.clock.monotonic() < self._hold_frames_until:
            return
        topic = self.topics.meter(self.cid)
        for batch in self.buffer.due(
            self._sent_at,
            now=self.clock.monotonic(),
            older_than=older_than,
            max_frames=self.settings.max_frames_per_message,
        ):
            self._publish(topic, encode(batch))

    def link_restarted(self) -> None:
        """The bridge's MQTT link came back: every unacknowledged batch goes again."""
        self._sent_at.clear()


def _remote_tag(cid: str, generation: int) -> str:
    """The id tag of a remote start: 20 characters (1.6's CiString20), the same for the same
    command, telling nothing of the charge."""
    return "CL" + hashlib.sha256(f"{cid}/{generation}".encode()).hexdigest()[:18].upper()


def transaction_id_16(
    cid: str, outlet: int, started_at: float, meter_start: float, tag: str
) -> int:
    """A 1.6 transaction id from what the station sent: a retried StartTransaction (same
    connector, time, meter and tag) gets the same id, and a new one a new id."""
    key = f"{cid}/{outlet}/{started_at:.3f}/{meter_start:.3f}/{tag}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "big") & 0x7FFFFFFF or 1

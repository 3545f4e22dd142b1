"""Deciding what one MQTT message becomes: rows to store, an ack to send, or a dead letter.

Pure: ``Triage.accept(topic, payload)`` adds to a ``Pending`` write and never raises for bad
input. The runner (ingest/worker.py) owns the network and the database.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from schemas.codec import CodecError, decode
from schemas.messages import (
    CommandAck,
    EdgeEvent,
    Message,
    MeterBatch,
    Presence,
    ReportedState,
)
from schemas.topics import TopicKind, Topics
from store.registry import RegistrySnapshot

UTC = dt.UTC
#: A reading as stored: (controller, outlet, minute, Wh, V, A, breaker ON, W, SoC %).
OutletRow = tuple[str, int, dt.datetime, float, float, float, bool, float | None, float | None]
MainRow = tuple[str, dt.datetime, float]
BatchRow = tuple[str, int, int, dt.datetime, dt.datetime]


class Refusal(enum.StrEnum):
    """Why a message became a dead letter, in a few kinds (a metric's label; the
    letter's ``reason`` says exactly what was wrong)."""

    INTERNAL_ERROR = "internal_error"
    UNKNOWN_TOPIC = "unknown_topic"
    UNDECODABLE = "undecodable"
    WRONG_CONTROLLER = "wrong_controller"
    UNREGISTERED_CONTROLLER = "unregistered_controller"
    UNREGISTERED_OUTLET = "unregistered_outlet"
    NOT_FOR_INGEST = "not_for_ingest"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    topic: str
    controller_id: str | None
    reason: str
    payload: bytes
    kind: Refusal


@dataclass
class Pending:
    """Everything received since the last database write."""

    outlet_rows: list[OutletRow] = field(default_factory=list)
    main_rows: list[MainRow] = field(default_factory=list)
    batch_rows: list[BatchRow] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    events: list[EdgeEvent] = field(default_factory=list)
    presence: dict[str, Presence] = field(default_factory=dict)
    states: dict[str, ReportedState] = field(default_factory=dict)
    command_acks: list[CommandAck] = field(default_factory=list)
    acks: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    #: Controllers that spoke (meter, event, ack: never retained, so always live).
    heard: set[str] = field(default_factory=set)
    #: Controllers that said they are online: each gets a time-only meter ack, its first
    #: word of the cloud's clock (edges apply no ON before they have one).
    clock_requests: set[str] = field(default_factory=set)
    messages: int = 0
    #: The write's first transaction (readings, batches, dead letters, status) committed.
    readings_stored: bool = False

    def __len__(self) -> int:
        return self.messages

    @property
    def rows(self) -> int:
        return len(self.outlet_rows) + len(self.main_rows)

    def marks(self) -> tuple[int, ...]:
        """Where every list ends now: ``rewind`` takes back what was added since."""
        return (
            len(self.outlet_rows),
            len(self.main_rows),
            len(self.batch_rows),
            len(self.dead_letters),
            len(self.events),
            len(self.command_acks),
        )

    def rewind(self, marks: tuple[int, ...]) -> None:
        lists: tuple[list[Any], ...] = (
            self.outlet_rows,
            self.main_rows,
            self.batch_rows,
            self.dead_letters,
            self.events,
            self.command_acks,
        )
        for items, mark in zip(lists, marks, strict=True):
            del items[mark:]


_minute_cache: dict[int, dt.datetime] = {}


def minute_time(epoch: int) -> dt.datetime:
    """Epoch seconds → aware datetime, cached (a batch's outlets share their minute)."""
    value = _minute_cache.get(epoch)
    if value is None:
        if len(_minute_cache) > 100_000:
            _minute_cache.clear()
        value = _minute_cache[epoch] = dt.datetime.fromtimestamp(epoch, UTC)
    return value


#: Messages only a live controller sends (presence and state are retained: the broker
#: hands them out again whenever ingest subscribes).
_LIVE = frozenset((TopicKind.METER, TopicKind.EVENT, TopicKind.ACK))


class Triage:
    def __init__(self, topics: Topics, registry: RegistrySnapshot) -> None:
        self.topics = topics
        self.registry = registry
        #: (controller, seq) of unregistered batches already dead-lettered: the edge resends
        #: them until it is registered, and one copy is enough.
        self._unregistered_seen: set[tuple[str, int]] = set()

    def accept(self, pending: Pending, topic: str, payload: bytes) -> None:
        """Add one message to ``pending``: its rows, or a dead letter with the reason.

        Never raises: should handling one message fail in a way nobody foresaw, whatever it
        had added is taken back and the message becomes a dead letter that says so.
        """
        pending.messages += 1
        marks = pending.marks()
        try:
            self._accept(pending, topic, payload)
        except Exception as exc:
            pending.rewind(marks)
            detail = str(exc)[:200]
            reason = f"internal error while handling this message ({type(exc).__name__}: {detail})"
            pending.dead_letters.append(
                DeadLetter(topic, None, reason, payload, Refusal.INTERNAL_ERROR)
            )

    def _accept(self, pending: Pending, topic: str, payload: bytes) -> None:
        parsed = self.topics.parse(topic)
        if parsed is None:
            pending.dead_letters.append(
                DeadLetter(topic, None, "not a chargeline topic", payload, Refusal.UNKNOWN_TOPIC)
            )
            return
        cid = parsed.controller_id
        try:
            message: Message = decode(parsed.kind, payload)
        except CodecError as exc:
            pending.dead_letters.append(
                DeadLetter(topic, cid, str(exc), payload, Refusal.UNDECODABLE)
            )
            return
        if message.controller_id != cid:
            reason = (
                f"payload names controller {message.controller_id!r} but came on {cid!r}'s topic"
            )
            pending.dead_letters.append(
                DeadLetter(topic, cid, reason, payload, Refusal.WRONG_CONTROLLER)
            )
            return
        if not self.registry.knows(cid):
            self._unregistered(pending, topic, cid, message, payload)
            return
        if parsed.kind in _LIVE:
            pending.heard.add(cid)
        match message:  # each topic decodes to its one message type
            case MeterBatch():
                self._meter(pending, topic, message, payload)
            case EdgeEvent():
                pending.events.append(message)
            case Presence():
                pending.presence[cid] = message
                if message.online:
                    pending.clock_requests.add(cid)
            case ReportedState():
                pending.states[cid] = message
            case CommandAck():
                pending.command_acks.append(message)
            case _:
                reason = f"{parsed.kind.value} messages are not for ingest"
                pending.dead_letters.append(
                    DeadLetter(topic, cid, reason, payload, Refusal.NOT_FOR_INGEST)
                )

    def _unregistered(
        self, pending: Pending, topic: str, cid: str, message: Message, payload: bytes
    ) -> None:
        # Not acknowledged: the edge keeps the data and delivers it once registered.
        if isinstance(message, MeterBatch):
            key = (cid, message.seq)
            if key in self._unregistered_seen:
                return
            if len(self._unregistered_seen) > 100_000:
                self._unregistered_seen.clear()
            self._unregistered_seen.add(key)
        reason = f"controller {cid!r} is not registered"
        pending.dead_letters.append(
            DeadLetter(topic, cid, reason, payload, Refusal.UNREGISTERED_CONTROLLER)
        )

    def _meter(self, pending: Pending, topic: str, batch: MeterBatch, payload: bytes) -> None:
        cid = batch.controller_id
        known = self.registry.outlets[cid]
        unknown: set[int] = set()
        outlet_rows = pending.outlet_rows
        main_rows = pending.main_rows
        for frame in batch.frames:
            minute = minute_time(frame.minute)
            main_rows.append((cid, minute, frame.main_energy_wh))
            # Unpacking beats attribute access here: this loop runs once per reading.
            for outlet, energy_wh, voltage_v, current_a, breaker_on, power_w, soc in frame.outlets:
                if outlet in known:
                    outlet_rows.append(
                        (
                            cid,
                            outlet,
                            minute,
                            energy_wh,
                            voltage_v,
                            current_a,
                            breaker_on,
                            power_w,
                            soc,
                        )
                    )
                else:
                    unknown.add(outlet)
        if unknown:
            reason = (
                f"outlets {sorted(unknown)} are not registered for controller {cid!r}; "
                "the batch's other readings were stored"
            )
            pending.dead_letters.append(
                DeadLetter(topic, cid, reason, payload, Refusal.UNREGISTERED_OUTLET)
            )
        minutes = [frame.minute for frame in batch.frames]
        pending.batch_rows.append(
            (cid, batch.seq, len(minutes), minute_time(min(minutes)), minute_time(max(minutes)))
        )
        pending.acks[cid].append(batch.seq)

"""Which open charge each message of one write concerns (pure).

Ingest feeds each open charge's lifecycle with the command acks, breaker events and minute
readings of its outlet, and hands the outlet's current observations to the rise detector.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from operator import itemgetter
from typing import Any, NamedTuple

from charging import charges, lifecycle
from charging.charges import OutletKey
from charging.lifecycle import Event
from ingest.triage import Pending
from schemas.messages import EdgeEvent, EdgeEventKind

_BREAKER_OPENED = (EdgeEventKind.BREAKER_SWITCHED, EdgeEventKind.OVERCURRENT_TRIP)


def _lifecycle_event(edge: EdgeEvent) -> Event | None:
    """What an edge event means to the charge on its outlet, if anything."""
    if edge.kind in _BREAKER_OPENED and not edge.breaker_on:
        return lifecycle.BreakerOpened(edge.detail, edge.at, edge.energy_wh)
    if edge.kind is EdgeEventKind.PAUSED:
        return lifecycle.Paused(edge.detail, edge.at)
    if edge.kind is EdgeEventKind.RESUMED and edge.breaker_on:
        return lifecycle.Resumed(edge.at, edge.energy_wh)
    return None


def controllers(pending: Pending) -> list[str]:
    """The controllers whose acks, edge events or readings are in this write: only their
    open charges can be fed by it. Readings are found by their batches (every reading
    comes with its batch's row), one per message rather than one per reading. Pure."""
    heard = {ack.controller_id for ack in pending.command_acks}
    heard.update(edge.controller_id for edge in pending.events)
    heard.update(row[0] for row in pending.batch_rows)
    return sorted(heard)


def route(
    pending: Pending, open_: dict[OutletKey, tuple[list[str], float]]
) -> tuple[
    defaultdict[str, list[tuple[float, Event]]], defaultdict[OutletKey, list[tuple[float, float]]]
]:
    """Which lifecycle inputs each open charge gets from one write, and the current
    observations per outlet for the rise detector. Pure."""
    feed: defaultdict[str, list[tuple[float, Event]]] = defaultdict(list)
    currents: defaultdict[OutletKey, list[tuple[float, float]]] = defaultdict(list)

    def to_charges(key: OutletKey, at: float, event: Event) -> None:
        for charge_id in open_[key][0]:
            feed[charge_id].append((at, event))

    for ack in pending.command_acks:
        key = (ack.controller_id, ack.outlet)
        if key in open_:
            to_charges(key, ack.at, lifecycle.Acked.of(ack))
    for edge in pending.events:
        key = (edge.controller_id, edge.outlet)
        if key not in open_:
            continue
        if edge.kind is EdgeEventKind.CURRENT_CROSSED:
            currents[key].append((edge.at, edge.current_a))
            continue
        event = _lifecycle_event(edge)
        if event is not None:
            to_charges(key, edge.at, event)
    # Per reading, so written out: a write at an evening peak has one for every outlet.
    # Each open outlet's lists are looked up once, not per reading; the readings of one
    # frame share its minute (one datetime), converted once.
    sinks: dict[OutletKey, tuple[tuple[list[tuple[float, Event]], ...], list[tuple[float, float]]]]
    sinks = {}
    minute_then: object = None
    at = 0.0
    reading_of = lifecycle.MinuteReading
    for cid, outlet, minute, energy_wh, _volts, current_a, _on, _w, _soc in pending.outlet_rows:
        key = (cid, outlet)
        sink = sinks.get(key)
        if sink is None:
            target = open_.get(key)
            if target is None:
                continue
            sink = sinks[key] = (tuple(feed[charge_id] for charge_id in target[0]), currents[key])
        if minute is not minute_then:
            minute_then, at = minute, minute.timestamp()
        item = (at, reading_of(at, energy_wh))
        charges_fed, observed = sink
        for inputs in charges_fed:
            inputs.append(item)
        observed.append((at, current_a))
    return feed, currents


_AT = itemgetter(0)


def in_time_order(feed: Mapping[str, list[tuple[float, Event]]]) -> dict[str, list[Event]]:
    """Each charge's inputs from ``route`` in time order (a stable sort: inputs at the same
    time keep the order they came in). Pure."""
    ordered: dict[str, list[Event]] = {}
    for charge_id, inputs in feed.items():
        timed = sorted(inputs, key=_AT) if len(inputs) > 1 else inputs
        ordered[charge_id] = [event for _, event in timed]
    return ordered


class Plan(NamedTuple):
    """What one write does to the open charges, before the rise detectors have run."""

    #: (controller, outlet) → (the ids of its open charges, its rise threshold).
    open_: dict[OutletKey, tuple[list[str], float]]
    #: Each charge's inputs from this write, with their times.
    timed: dict[str, list[tuple[float, Event]]]
    #: The same in time order, and the charges stepped through them from ``rows``.
    feed: dict[str, list[Event]]
    stepped: dict[str, charges.Stepped]
    rows: dict[str, tuple[Any, ...]]
    #: The current observations of the outlets whose rise detector matters: those with a
    #: charge still waiting for its rise (``lifecycle.AWAITING_RISE``). The others'
    #: detectors are left as they are: the gateway re-arms an outlet's when it creates the
    #: next charge there.
    watched: dict[OutletKey, list[tuple[float, float]]]


_AWAITING_RISE = frozenset(state.value for state in lifecycle.AWAITING_RISE)


def plan(
    pending: Pending,
    open_: dict[OutletKey, tuple[list[str], float]],
    rows: Sequence[tuple[Any, ...]],
) -> Plan:
    """Route the write's messages to the open charges and step them from ``rows`` (as
    ``charges.read_unlocked`` reads them). Pure."""
    timed, currents = route(pending, open_)
    feed = in_time_order(timed)
    by_id = {row[0]: row for row in rows}
    watched = {
        key: seen
        for key, seen in currents.items()
        if any(cid in by_id and by_id[cid][1] in _AWAITING_RISE for cid in open_[key][0])
    }
    return Plan(open_, timed, feed, charges.step_rows(rows, feed), by_id, watched)


def with_rises(
    plan: Plan, rose: Mapping[OutletKey, list[tuple[float, float]]]
) -> tuple[dict[str, list[Event]], dict[str, charges.Stepped]]:
    """The plan's feed and steps with each rise given to its outlet's charges, those
    charges stepped again from their rows. Pure."""
    timed = {cid: list(inputs) for cid, inputs in plan.timed.items()}
    again: set[str] = set()
    for key, rises in rose.items():
        for at, current_a in rises:
            for charge_id in plan.open_[key][0]:
                timed.setdefault(charge_id, []).append((at, lifecycle.CurrentRose(at, current_a)))
                again.add(charge_id)
    feed = plan.feed | in_time_order({cid: timed[cid] for cid in again})
    rows = [plan.rows[cid] for cid in sorted(again) if cid in plan.rows]
    return feed, plan.stepped | charges.step_rows(rows, feed)

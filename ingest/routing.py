"""Which open charge each message of one write concerns (pure).

Ingest feeds each open charge's lifecycle with the command acks, breaker events and minute
readings of its outlet, and hands the outlet's current observations to the rise detector.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from operator import itemgetter

from charging import lifecycle
from charging.charges import OutletKey
from charging.lifecycle import Event
from ingest.triage import Pending
from schemas.messages import EdgeEventKind

_BREAKER_OPENED = (EdgeEventKind.BREAKER_SWITCHED, EdgeEventKind.OVERCURRENT_TRIP)


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
        elif edge.kind in _BREAKER_OPENED and not edge.breaker_on:
            to_charges(key, edge.at, lifecycle.BreakerOpened(edge.detail, edge.at, edge.energy_wh))
    # Per reading, so written out: a write at an evening peak has one for every outlet.
    # Each open outlet's lists are looked up once, not per reading; the readings of one
    # frame share its minute (one datetime), converted once.
    sinks: dict[OutletKey, tuple[tuple[list[tuple[float, Event]], ...], list[tuple[float, float]]]]
    sinks = {
        key: (tuple(feed[cid] for cid in ids), currents[key]) for key, (ids, _) in open_.items()
    }
    minute_then: object = None
    at = 0.0
    reading_of = lifecycle.MinuteReading
    for cid, outlet, minute, energy_wh, _volts, current_a, _on in pending.outlet_rows:
        sink = sinks.get((cid, outlet))
        if sink is None:
            continue
        if minute is not minute_then:
            minute_then, at = minute, minute.timestamp()
        item = (at, reading_of(at, energy_wh))
        charges_fed, observed = sink
        for inputs in charges_fed:
            inputs.append(item)
        observed.append((at, current_a))
    # Only the charges and outlets this write concerns.
    for charge_id in [cid for cid, inputs in feed.items() if not inputs]:
        del feed[charge_id]
    for key in [key for key, seen in currents.items() if not seen]:
        del currents[key]
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

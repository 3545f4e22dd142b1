"""Which open charge each message of one write concerns (pure).

Ingest feeds each open charge's lifecycle with the command acks, breaker events and minute
readings of its outlet, and hands the outlet's current observations to the rise detector.
"""

from __future__ import annotations

from collections import defaultdict

from charging import lifecycle
from charging.charges import OutletKey
from charging.lifecycle import Event
from ingest.triage import Pending
from schemas.messages import EdgeEventKind

_BREAKER_OPENED = (EdgeEventKind.BREAKER_SWITCHED, EdgeEventKind.OVERCURRENT_TRIP)


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
    for cid, outlet, minute, energy_wh, _volts, current_a, breaker_on in pending.outlet_rows:
        key = (cid, outlet)
        if key in open_:
            at = minute.timestamp()
            to_charges(key, at, lifecycle.MinuteReading(at, energy_wh, breaker_on))
            currents[key].append((at, current_a))
    return feed, currents

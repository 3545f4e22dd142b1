"""Charges in the database: the lifecycle applied under a row lock, webhooks in the same
transaction.

``apply(conn, charge_id, event)`` locks the charge row, runs ``lifecycle.step`` and writes
the new state and any webhooks together, so a fact and its webhook commit or roll back as
one. Several processes (the gateway on its fast path, ingest from the durable stream) may
apply the same event: the lock serialises them and the state machine ignores repeats, so
each webhook is written once.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from typing import Any

import psycopg

from chargeline.outbox import enqueue
from chargeline.times import epoch_or_none, utc_or_none
from ingest import lifecycle
from ingest.lifecycle import Charge, Event, Notice, Reading, State
from ingest.triage import Pending
from schemas.messages import EdgeEventKind

#: ``lifecycle.ACTIVE`` as an SQL list, literal so that the partial index on active
#: charges (``charges_one_active_per_outlet``) serves queries using ``state IN (…)``.
ACTIVE_SQL = ", ".join(sorted(f"'{state.value}'" for state in lifecycle.ACTIVE))

#: Edge events that mean the breaker opened by itself, ending a charge.
_BREAKER_OPENED = (EdgeEventKind.BREAKER_SWITCHED, EdgeEventKind.OVERCURRENT_TRIP)

OutletKey = tuple[str, int]

_COLUMNS = (
    "charge_id, state, start_generation, stop_generation, started_at, rise_at, stopped_at,"
    " stop_reason, failure, first_minute, first_energy_wh, last_minute, last_energy_wh,"
    " energy_wh, reported, client_id, outlet_id, end_at"
)


def _reading(minute: dt.datetime | None, energy: float | None) -> Reading | None:
    return None if minute is None or energy is None else Reading(minute.timestamp(), energy)


def _charge(row: tuple[Any, ...]) -> Charge:
    return Charge(
        charge_id=row[0],
        state=State(row[1]),
        start_generation=row[2],
        stop_generation=row[3],
        started_at=epoch_or_none(row[4]),
        rise_at=epoch_or_none(row[5]),
        stopped_at=epoch_or_none(row[6]),
        stop_reason=row[7],
        failure=row[8],
        first_reading=_reading(row[9], row[10]),
        last_reading=_reading(row[11], row[12]),
        energy_wh=row[13],
        reported=row[14],
    )


async def create(
    conn: psycopg.AsyncConnection[Any],
    *,
    charge_id: str,
    client_id: str,
    outlet_id: str,
    controller_id: str,
    outlet_no: int,
    end_at: float,
    request_sha256: bytes,
    generation: int,
) -> None:
    """A new charge in ``requested``; UniqueViolation means the outlet is busy.

    It also re-arms the outlet's current-rise detector: the breaker is OFF before a start,
    so nothing is drawn, and only observations from now on count (a backlog from the
    previous charge must not announce this one's rise).
    """
    await conn.execute(
        "INSERT INTO charges (charge_id, client_id, outlet_id, controller_id, outlet_no,"
        " request_sha256, state, start_generation, end_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            charge_id,
            client_id,
            outlet_id,
            controller_id,
            outlet_no,
            request_sha256,
            State.REQUESTED.value,
            generation,
            utc_or_none(end_at),
        ),
    )
    # 2 s of slack: the edge stamps its events with its estimate of cloud time, which may
    # lag a little; the breaker was OFF for longer than that before any start.
    await conn.execute(
        "INSERT INTO outlet_current_state VALUES (%s, %s, false, extract(epoch FROM now()) - 2)"
        " ON CONFLICT (controller_id, outlet_no) DO UPDATE SET high = false,"
        " seen_at = excluded.seen_at",
        (controller_id, outlet_no),
    )


async def apply(
    conn: psycopg.AsyncConnection[Any], charge_id: str, event: Event
) -> tuple[Charge, tuple[Notice, ...]] | None:
    """Step one charge in the caller's transaction; None if there is no such charge."""
    cur = await conn.execute(
        f"SELECT {_COLUMNS} FROM charges WHERE charge_id = %s FOR UPDATE", (charge_id,)
    )
    row = await cur.fetchone()
    if row is None:
        return None
    before = _charge(row)
    after, notices = lifecycle.step(before, event)
    if after != before:
        await conn.execute(
            "UPDATE charges SET state = %s, stop_generation = %s, started_at = %s,"
            " rise_at = %s, stopped_at = %s, stop_reason = %s, failure = %s,"
            " first_minute = %s, first_energy_wh = %s, last_minute = %s, last_energy_wh = %s,"
            " energy_wh = %s, reported = %s, updated_at = now() WHERE charge_id = %s",
            (
                after.state.value,
                after.stop_generation,
                utc_or_none(after.started_at),
                utc_or_none(after.rise_at),
                utc_or_none(after.stopped_at),
                after.stop_reason,
                after.failure,
                utc_or_none(after.first_reading.minute if after.first_reading else None),
                after.first_reading.energy_wh if after.first_reading else None,
                utc_or_none(after.last_reading.minute if after.last_reading else None),
                after.last_reading.energy_wh if after.last_reading else None,
                after.energy_wh,
                after.reported,
                charge_id,
            ),
        )
    client_id, outlet_id, end_at = row[15], row[16], row[17]
    for notice in notices:
        await enqueue(
            conn,
            client_id=client_id,
            kind=notice.kind,
            charge_id=charge_id,
            data=webhook_data(after, notice, outlet_id=outlet_id, end_at=end_at),
        )
    return after, notices


def webhook_data(
    charge: Charge, notice: Notice, *, outlet_id: str, end_at: dt.datetime
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "charge_id": charge.charge_id,
        "outlet_id": outlet_id,
        "state": charge.state.value,
        "at": notice.at,
        "end_at": end_at.timestamp(),
    }
    if notice.kind == "charge.current_rise":
        data["current"] = notice.detail
    if notice.kind == "charge.stopped":
        data["reason"] = notice.detail
        data["energy_wh"] = round(charge.energy_wh, 3)
        data["meter"] = {
            "first": _reading_dict(charge.first_reading),
            "last": _reading_dict(charge.last_reading),
        }
    if notice.kind == "charge.failed":
        data["reason"] = notice.detail
    return data


def _reading_dict(reading: Reading | None) -> dict[str, float] | None:
    return None if reading is None else {"minute": reading.minute, "energy_wh": reading.energy_wh}


async def open_charges(
    conn: psycopg.AsyncConnection[Any],
) -> dict[tuple[str, int], tuple[list[str], float]]:
    """Outlets with charges that still take events: (controller, outlet) → (ids, threshold)."""
    cur = await conn.execute(
        "SELECT c.controller_id, c.outlet_no, array_agg(c.charge_id ORDER BY c.requested_at),"
        " min(o.rise_threshold_a) FROM charges c JOIN outlets o USING (outlet_id)"
        f" WHERE c.state IN ({ACTIVE_SQL})"
        "    OR (c.state = 'stopped' AND NOT c.reported)"
        " GROUP BY c.controller_id, c.outlet_no"
    )
    return {(r[0], r[1]): (list(r[2]), float(r[3])) for r in await cur.fetchall()}


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
            to_charges(
                key, ack.at, lifecycle.Acked(ack.generation, ack.outcome, ack.breaker_on, ack.at)
            )
    for edge in pending.events:
        key = (edge.controller_id, edge.outlet)
        if key not in open_:
            continue
        if edge.kind is EdgeEventKind.CURRENT_CROSSED:
            currents[key].append((edge.at, edge.current_a))
        elif edge.kind in _BREAKER_OPENED and not edge.breaker_on:
            to_charges(key, edge.at, lifecycle.BreakerOpened(edge.detail, edge.at))
    for cid, outlet, minute, energy_wh, _volts, current_a, breaker_on in pending.outlet_rows:
        key = (cid, outlet)
        if key in open_:
            at = minute.timestamp()
            to_charges(key, at, lifecycle.MinuteReading(at, energy_wh, breaker_on))
            currents[key].append((at, current_a))
    return feed, currents

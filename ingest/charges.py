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
from typing import Any

import psycopg

from cloud_gateway.webhooks import enqueue_async
from ingest import lifecycle
from ingest.lifecycle import Charge, Event, Notice, Reading, State

_COLUMNS = (
    "charge_id, state, start_generation, stop_generation, started_at, rise_at, stopped_at,"
    " stop_reason, failure, first_minute, first_energy_wh, last_minute, last_energy_wh,"
    " energy_wh, reported, client_id, outlet_id, end_at"
)


def _ts(epoch: float | None) -> dt.datetime | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, dt.UTC)


def _epoch(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def _reading(minute: dt.datetime | None, energy: float | None) -> Reading | None:
    return None if minute is None or energy is None else Reading(minute.timestamp(), energy)


def _charge(row: tuple[Any, ...]) -> Charge:
    return Charge(
        charge_id=row[0],
        state=State(row[1]),
        start_generation=row[2],
        stop_generation=row[3],
        started_at=_epoch(row[4]),
        rise_at=_epoch(row[5]),
        stopped_at=_epoch(row[6]),
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
    """A new charge in ``requested``; UniqueViolation means the outlet is busy."""
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
            _ts(end_at),
        ),
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
                _ts(after.started_at),
                _ts(after.rise_at),
                _ts(after.stopped_at),
                after.stop_reason,
                after.failure,
                _ts(after.first_reading.minute if after.first_reading else None),
                after.first_reading.energy_wh if after.first_reading else None,
                _ts(after.last_reading.minute if after.last_reading else None),
                after.last_reading.energy_wh if after.last_reading else None,
                after.energy_wh,
                after.reported,
                charge_id,
            ),
        )
    client_id, outlet_id, end_at = row[15], row[16], row[17]
    for notice in notices:
        await enqueue_async(
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


async def active_on(
    conn: psycopg.AsyncConnection[Any], controller_id: str, outlet_no: int
) -> list[str]:
    """Charges on an outlet that still take events (active, or stopped but not reported)."""
    cur = await conn.execute(
        "SELECT charge_id FROM charges WHERE controller_id = %s AND outlet_no = %s"
        " AND (state IN ('requested', 'on', 'drawing', 'stopping')"
        "      OR (state = 'stopped' AND NOT reported))",
        (controller_id, outlet_no),
    )
    return [r[0] for r in await cur.fetchall()]

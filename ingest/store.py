"""Writing one ``Pending`` to PostgreSQL in one transaction.

Readings and batch records take the fast path first: a binary COPY straight into the table inside a
savepoint. Only when that hits a duplicate key (a redelivered batch) does the write fall
back to COPY into a temporary staging table plus ``INSERT … ON CONFLICT DO NOTHING``. Fresh
minutes, the common case, cost a plain COPY; replays are absorbed by the key.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors, sql

from charging import charges, lifecycle, status
from charging.current_rise import RiseState, observe_all
from ingest import routing
from ingest.triage import Pending
from kernel.times import utc
from schemas.messages import EdgeEventKind

log = logging.getLogger(__name__)

_OUTLET_COLUMNS = (
    "controller_id",
    "outlet_no",
    "minute",
    "energy_wh",
    "voltage_v",
    "current_a",
    "breaker_on",
)
_OUTLET_TYPES = ("text", "int2", "timestamptz", "float8", "float4", "float4", "bool")
_MAIN_COLUMNS = ("controller_id", "minute", "energy_wh")
_MAIN_TYPES = ("text", "timestamptz", "float8")
_BATCH_COLUMNS = ("controller_id", "seq", "frames", "first_minute", "last_minute")
_BATCH_TYPES = ("text", "int8", "int2", "timestamptz", "timestamptz")
#: Tables written by COPY, each with a staging twin for redeliveries.
_COPIED = ("outlet_readings", "main_meter_readings", "meter_batches")


class Store:
    """Owns one async connection; ``write`` commits a Pending or raises psycopg errors."""

    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn
        self._staging_ready = False

    @classmethod
    async def connect(cls, url: str) -> Store:
        # autocommit: every write is exactly one explicit transaction, never a savepoint
        # inside an implicit one that nobody commits
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=5, autocommit=True)
        return cls(conn)

    async def close(self) -> None:
        await self.conn.close()

    async def write(self, pending: Pending) -> None:
        async with self.conn.transaction():
            await self._insert_new(
                "outlet_readings", _OUTLET_COLUMNS, _OUTLET_TYPES, pending.outlet_rows
            )
            await self._insert_new(
                "main_meter_readings", _MAIN_COLUMNS, _MAIN_TYPES, pending.main_rows
            )
            await self._insert_new(
                "meter_batches", _BATCH_COLUMNS, _BATCH_TYPES, pending.batch_rows
            )
            await self._dead_letters(pending)
            await self._events(pending)
            await self._command_acks(pending)
            await self._status(pending)
            await self._charges(pending)  # last: it locks the charges until the commit
        await self._refresh_late(pending)

    async def _refresh_late(self, pending: Pending) -> None:
        """After the commit: bring late minutes into the hourly aggregates (TimescaleDB
        refreshes only its policy's window by itself; on plain PostgreSQL the procedure
        does nothing). A failure here loses nothing: the minutes are stored."""
        hours = late_hours(pending.batch_rows, now=time.time())
        for start, end in hours:
            try:
                await self.conn.execute("CALL chargeline_refresh_late(%s, %s)", (start, end))
            except psycopg.Error as exc:
                log.warning(
                    "late minutes %s..%s are stored, but refreshing their hourly aggregates"
                    " failed (%s); the refresh policy or the next late batch will",
                    start,
                    end,
                    exc,
                )
                return

    async def _insert_new(
        self,
        table: str,
        columns: Sequence[str],
        types: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        """Insert ``rows``, skipping any whose key is already stored."""
        if not rows:
            return
        try:
            async with self.conn.transaction():  # savepoint: a duplicate undoes only this COPY
                await self._copy(table, columns, types, rows)
        except errors.UniqueViolation:
            await self._ensure_staging()
            stage = f"stage_{table}"
            await self._copy(stage, columns, types, rows)
            names = sql.SQL(", ").join(map(sql.Identifier, columns))
            await self.conn.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT DO NOTHING").format(
                    sql.Identifier(table), names, names, sql.Identifier(stage)
                )
            )
            await self.conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(stage)))

    async def _copy(
        self,
        table: str,
        columns: Sequence[str],
        types: Sequence[str],
        rows: Sequence[tuple[Any, ...]],
    ) -> None:
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        async with self.conn.cursor().copy(statement) as copy:
            copy.set_types(list(types))
            for row in rows:
                await copy.write_row(row)

    async def _ensure_staging(self) -> None:
        if self._staging_ready:
            return
        for table in _COPIED:
            await self.conn.execute(
                sql.SQL(
                    "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                ).format(sql.Identifier(f"stage_{table}"), sql.Identifier(table))
            )
        self._staging_ready = True

    async def _dead_letters(self, pending: Pending) -> None:
        if not pending.dead_letters:
            return
        async with self.conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO dead_letters (topic, controller_id, reason, payload) VALUES (%s, %s, %s, %s)",
                [
                    (_text(d.topic), d.controller_id, _text(d.reason), d.payload)
                    for d in pending.dead_letters
                ],
            )

    async def _events(self, pending: Pending) -> None:
        if not pending.events:
            return
        async with self.conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO edge_events (controller_id, at, kind, outlet_no, generation, current_a,"
                " breaker_on, detail, energy_wh, voltage_v)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [
                    (
                        e.controller_id,
                        utc(e.at),
                        e.kind.value,
                        e.outlet,
                        e.generation,
                        e.current_a,
                        e.breaker_on,
                        e.detail,
                        e.energy_wh,
                        e.voltage_v,
                    )
                    for e in pending.events
                ],
            )
        for e in pending.events:
            if e.kind is EdgeEventKind.STATUS:
                await status.answer(self.conn, e)

    async def _command_acks(self, pending: Pending) -> None:
        """Complete the audit trail; the first answer for a generation is the one kept."""
        if not pending.command_acks:
            return
        async with self.conn.cursor() as cur:
            await cur.executemany(
                "UPDATE commands SET outcome = %s, breaker_on = %s, acked_at = %s"
                " WHERE controller_id = %s AND outlet_no = %s AND generation = %s"
                " AND outcome IS NULL",
                [
                    (
                        a.outcome.value,
                        a.breaker_on,
                        utc(a.at),
                        a.controller_id,
                        a.outlet,
                        a.generation,
                    )
                    for a in pending.command_acks
                ],
            )

    async def _charges(self, pending: Pending) -> None:
        """Feed acks, edge events and readings to the charges they concern, in time order.

        Same transaction as the facts: a charge's state, its webhooks and the readings
        they come from commit together. A handful of statements per write, however many
        charges are open (an evening peak has one on every outlet): one finds the open
        charges of the controllers heard from, one locks and one writes the rise
        detectors, and ``charges.apply_many`` steps the charges before it writes them
        (locking only the rows it writes, with that one statement). This runs last in the
        write, so the charge rows (which a partner's stop also needs) stay locked only
        until the commit that follows.
        """
        controllers = routing.controllers(pending)
        if not controllers:
            return
        open_ = await charges.open_charges(self.conn, controllers)
        if not open_:
            return
        feed, currents = routing.route(pending, open_)
        for key, rises in (await self._rises(currents, open_)).items():
            for at, current_a in rises:
                for charge_id in open_[key][0]:
                    feed[charge_id].append((at, lifecycle.CurrentRose(at, current_a)))
        await charges.apply_many(self.conn, routing.in_time_order(feed), step_before_locking=True)

    async def _rises(
        self,
        currents: dict[tuple[str, int], list[tuple[float, float]]],
        open_: dict[tuple[str, int], tuple[list[str], float]],
    ) -> dict[tuple[str, int], list[tuple[float, float]]]:
        """Run each outlet's persisted current-rise detector over its new observations:
        the rises found, per outlet. The detectors' rows are locked (one statement, in key
        order) because the gateway re-arms an outlet's when it creates a charge there."""
        if not currents:
            return {}
        keys = sorted(currents)
        cur = await self.conn.execute(
            "SELECT s.controller_id, s.outlet_no, s.high, s.seen_at FROM outlet_current_state s"
            " JOIN unnest(%b::text[], %b::int2[]) AS k(controller_id, outlet_no)"
            " USING (controller_id, outlet_no)"
            " ORDER BY s.controller_id, s.outlet_no FOR UPDATE OF s",
            ([k[0] for k in keys], [k[1] for k in keys]),
        )
        states = {(r[0], r[1]): RiseState(r[2], r[3]) for r in await cur.fetchall()}
        rises: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for key in keys:
            states[key], rose = observe_all(
                states.get(key, RiseState()), sorted(currents[key]), threshold_a=open_[key][1]
            )
            if rose:
                rises[key] = rose
        await self.conn.execute(
            "INSERT INTO outlet_current_state"
            " SELECT * FROM unnest(%b::text[], %b::int2[], %b::bool[], %b::float8[])"
            " ON CONFLICT (controller_id, outlet_no) DO UPDATE SET high = excluded.high,"
            " seen_at = excluded.seen_at",
            (
                [k[0] for k in keys],
                [k[1] for k in keys],
                [states[k].high for k in keys],
                [states[k].seen_at for k in keys],
            ),
        )
        return rises

    async def _status(self, pending: Pending) -> None:
        async with self.conn.cursor() as cur:
            if pending.presence:
                await status.presence_changes(self.conn, pending.presence.values())
            await status.heard_from(self.conn, pending.heard)
            if pending.states:
                await cur.executemany(
                    "INSERT INTO controller_status (controller_id, firmware, started_at, outlets, state_at)"
                    " VALUES (%s, %s, %s, %s, now()) ON CONFLICT (controller_id) DO UPDATE SET"
                    " firmware = excluded.firmware, started_at = excluded.started_at,"
                    " outlets = excluded.outlets, state_at = now()",
                    [
                        (
                            s.controller_id,
                            s.firmware,
                            utc(s.started_at),
                            json.dumps([o._asdict() for o in s.outlets]),
                        )
                        for s in pending.states.values()
                    ],
                )


def _text(value: str) -> str:
    """PostgreSQL text cannot hold NUL: a device's topic or a reason quoting it keeps it
    visible as ``\\x00`` instead of failing the write that holds everyone's readings."""
    return value.replace("\x00", "\\x00") if "\x00" in value else value


#: Minutes older than this are late: below the aggregates' materialised part.
LATE_AFTER_S = 2 * 3600


def late_hours(
    batch_rows: Sequence[tuple[Any, ...]], *, now: float
) -> list[tuple[dt.datetime, dt.datetime]]:
    """The hour ranges (merged, ``[start, end)``) that late batches wrote into.

    ``batch_rows`` are ``(controller, seq, frames, first minute, last minute)``."""
    hours: set[dt.datetime] = set()
    for first, last in {(row[3], row[4]) for row in batch_rows}:  # a fleet's share a few
        if first.timestamp() > now - LATE_AFTER_S:
            continue
        hour = first.replace(minute=0, second=0, microsecond=0)
        while hour <= last:
            hours.add(hour)
            hour += dt.timedelta(hours=1)
    ranges: list[tuple[dt.datetime, dt.datetime]] = []
    for hour in sorted(hours):
        if ranges and ranges[-1][1] == hour:
            ranges[-1] = (ranges[-1][0], hour + dt.timedelta(hours=1))
        else:
            ranges.append((hour, hour + dt.timedelta(hours=1)))
    return ranges

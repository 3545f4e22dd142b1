"""Writing one ``Pending`` to PostgreSQL: its readings in one transaction, what it does to
the charges in a second (see ``Store.write``).

Readings and batch records take the fast path first: a binary COPY straight into the table inside a
savepoint. Only when that hits a duplicate key (a redelivered batch) does the write fall
back to COPY into a temporary staging table plus ``INSERT … ON CONFLICT DO NOTHING``. Fresh
minutes, the common case, cost a plain COPY; replays are absorbed by the key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import errors, sql

from charging import charges, status
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
    "power_w",
    "soc_percent",
)
_OUTLET_TYPES = (
    "text",
    "int2",
    "timestamptz",
    "float8",
    "float4",
    "float4",
    "bool",
    "float4",
    "float4",
)
_MAIN_COLUMNS = ("controller_id", "minute", "energy_wh")
_MAIN_TYPES = ("text", "timestamptz", "float8")
_BATCH_COLUMNS = ("controller_id", "seq", "frames", "first_minute", "last_minute")
_BATCH_TYPES = ("text", "int8", "int2", "timestamptz", "timestamptz")
#: Tables written by COPY, each with a staging twin for redeliveries.
_COPIED = ("outlet_readings", "main_meter_readings", "meter_batches")


class Store:
    """Owns two async connections; ``write`` commits a Pending or raises psycopg errors.

    ``conn`` holds each write's transactions. ``side`` reads, without locks, what the open
    charges need while ``conn`` stores the readings (see ``write``)."""

    def __init__(
        self, conn: psycopg.AsyncConnection[Any], side: psycopg.AsyncConnection[Any]
    ) -> None:
        self.conn = conn
        self.side = side
        self._staging_ready = False

    @classmethod
    async def connect(cls, url: str) -> Store:
        # autocommit: every transaction of a write is explicit, never a savepoint inside
        # an implicit one that nobody commits
        conn = await psycopg.AsyncConnection.connect(url, connect_timeout=5, autocommit=True)
        try:
            side = await psycopg.AsyncConnection.connect(url, connect_timeout=5, autocommit=True)
        except BaseException:
            await conn.close()
            raise
        return cls(conn, side)

    async def close(self) -> None:
        await self.conn.close()
        await self.side.close()

    async def write(self, pending: Pending) -> None:
        """Store ``pending`` in two transactions: first the readings, the batches, the dead
        letters and the controllers' status; then the edge events, the command acks, and
        what they and the readings do to the charges and rise detectors.

        Two, so that the charge rows (which a partner's stop also locks) are held for the
        second, small transaction only, not until the readings' commit. A failure between
        the two is retried from the second. After a crash between them the edges send the
        batches again (they are acknowledged after both), and their readings, stored once
        by their key, feed the charges again, which count a minute once however often it
        comes (``lifecycle``). The edge events and command acks commit with what they do to
        the charges, as before.

        The charges' part overlaps the storing: while PostgreSQL copies the readings in
        (and its triggers fold them into hours), ``side`` reads the open charges and a
        thread steps them (``routing.plan``). The transaction then runs the rise detectors and
        writes only the charge rows still as they were read; the others are locked, read
        and stepped again (``charges.write_stepped``)."""
        plan = asyncio.create_task(self._plan_charges(pending))
        try:
            await self._store(pending, plan)
        finally:
            if not plan.done():  # the write failed first: leave ``side`` idle
                plan.cancel()
                await asyncio.wait([plan])
            if not plan.cancelled():
                plan.exception()  # retrieved: the write's own error is the one raised
        await self._refresh_late(pending)

    async def _store(self, pending: Pending, plan: asyncio.Task[routing.Plan | None]) -> None:
        if not pending.readings_stored:
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
                await self._status(pending)
            pending.readings_stored = True  # a retry of this write starts below
        async with self.conn.transaction():
            await self._events(pending)
            await self._command_acks(pending)
            ready = await plan
            if ready is not None:
                await self._charges(ready)  # last: it locks the charges until the commit

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

    async def _plan_charges(self, pending: Pending) -> routing.Plan | None:
        """What this write does to the open charges, from their rows as they are now (read
        on ``side``, without locks), stepped in a thread so that the event loop keeps
        feeding the readings' COPY meanwhile."""
        controllers = routing.controllers(pending)
        if not controllers:
            return None
        open_ = await charges.open_charges(self.side, controllers)
        if not open_:
            return None
        rows = await charges.read_unlocked(
            self.side, sorted(cid for ids, _ in open_.values() for cid in ids)
        )
        return await asyncio.to_thread(routing.plan, pending, open_, rows)

    async def _charges(self, plan: routing.Plan) -> None:
        """Write the plan: acks, edge events and readings fed to the charges they concern,
        in time order, after each observed outlet's rise detector has run (a rise is one
        more input for the outlet's charges: those few are stepped again with it).

        Same transaction as the edge events and command acks it applies: a charge's
        state, its webhooks and those facts commit together (the readings committed just
        before, see ``write``). A handful of statements per write, however many charges
        are open (an evening peak has one on every outlet). This runs last, so the charge
        rows (which a partner's stop also needs) stay locked only from their one
        ``UPDATE`` to the commit that follows."""
        rose = await self._rises(plan.watched, plan.open_)
        feed, stepped = plan.feed, plan.stepped
        if rose:
            feed, stepped = routing.with_rises(plan, rose)
        await charges.write_stepped(self.conn, feed, stepped)

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

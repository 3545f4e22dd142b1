"""Every SQL statement the partner API runs (the operator's stop reads charges here too),
beside the rows it reads.

Functions that only send a query (``select_charge``, ``outlet_route``) return the cursor,
so a caller in pipeline mode can send several before waiting for any.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from charging import charges
from cloud_gateway.models import Charge

Conn = psycopg.AsyncConnection[Any]


@dataclass(frozen=True, slots=True)
class ChargeRow:
    """A ``charges`` row as the API reads it (``class_row`` fills it by column name)."""

    charge_id: str  # the system's key (charges.internal_id)
    partner_charge_id: str  # the client's own id for it: the only one it ever sees
    outlet_id: str
    state: str
    requested_at: dt.datetime
    started_at: dt.datetime | None
    rise_at: dt.datetime | None
    stopped_at: dt.datetime | None
    end_at: dt.datetime
    stop_reason: str | None
    failure: str | None
    energy_wh: float
    client_id: str
    request_sha256: bytes
    controller_id: str
    outlet_no: int

    def json(self) -> dict[str, Any]:
        """What the partner sees of a charge (``models.Charge``)."""
        return Charge(
            charge_id=self.partner_charge_id,
            outlet_id=self.outlet_id,
            state=self.state,  # a State value, checked by the model
            requested_at=self.requested_at,
            started_at=self.started_at,
            current_rise_at=self.rise_at,
            stopped_at=self.stopped_at,
            end_at=self.end_at,
            stop_reason=self.stop_reason,
            failure=self.failure,
            energy_wh=round(self.energy_wh, 3),
        ).model_dump(mode="json")


CHARGE_COLUMNS = tuple(f.name for f in fields(ChargeRow))
_SELECT_CHARGE = f"SELECT {', '.join(CHARGE_COLUMNS)} FROM charges WHERE charge_id = %s"
_SELECT_OWN_CHARGE = (
    f"SELECT {', '.join(CHARGE_COLUMNS)} FROM charges"
    " WHERE client_id = %s AND partner_charge_id = %s"
)


def charge_cursor(conn: Conn) -> psycopg.AsyncCursor[ChargeRow]:
    return conn.cursor(row_factory=class_row(ChargeRow))


async def select_charge(conn: Conn, charge_id: str) -> psycopg.AsyncCursor[ChargeRow]:
    """Send the query (in pipeline mode it waits for the next sync); fetch from the cursor."""
    cur = charge_cursor(conn)
    await cur.execute(_SELECT_CHARGE, (charge_id,))
    return cur


async def select_own_charge(
    conn: Conn, client_id: str, partner_charge_id: str
) -> psycopg.AsyncCursor[ChargeRow]:
    """``select_charge`` by the id a client gave: another client's charges do not exist
    for it (the same id names a different charge, or none)."""
    cur = charge_cursor(conn)
    await cur.execute(_SELECT_OWN_CHARGE, (client_id, partner_charge_id))
    return cur


async def outlet_route(conn: Conn, outlet_id: str) -> psycopg.AsyncCursor[Any]:
    """Sends the lookup of (controller_id, outlet_no, online, in_service) for one outlet."""
    return await conn.execute(
        "SELECT o.controller_id, o.outlet_no, s.online, o.in_service FROM outlets o"
        " LEFT JOIN controller_status s USING (controller_id) WHERE o.outlet_id = %s",
        (outlet_id,),
    )


async def outlet_status(conn: Conn, client_id: str, outlet_id: str) -> dict[str, Any] | None:
    """The outlet's latest minute reading, its controller's presence, and whether it is
    charging; another client's charge shows only as "charging", never its id."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        "SELECT s.online, r.minute, r.energy_wh, r.voltage_v, r.current_a, r.breaker_on,"
        " a.client_id IS NOT NULL AS charging,"
        " CASE WHEN a.client_id = %s THEN a.partner_charge_id END AS active_charge_id"
        " FROM outlets o LEFT JOIN controller_status s USING (controller_id)"
        " LEFT JOIN LATERAL (SELECT * FROM outlet_readings r"
        "   WHERE r.controller_id = o.controller_id AND r.outlet_no = o.outlet_no"
        "   ORDER BY minute DESC LIMIT 1) r ON true"
        " LEFT JOIN charges a ON a.outlet_id = o.outlet_id"
        f"   AND a.state IN ({charges.ACTIVE_SQL})"
        " WHERE o.outlet_id = %s",
        (client_id, outlet_id),
    )
    return await cur.fetchone()


async def add_status_request(
    conn: Conn,
    *,
    request_id: str,
    client_id: str,
    outlet_id: str,
    controller_id: str,
    outlet_no: int,
) -> dt.datetime:
    """Records a status request; when it was made."""
    cur = await conn.execute(
        "INSERT INTO status_requests (request_id, client_id, outlet_id, controller_id,"
        " outlet_no) VALUES (%s, %s, %s, %s, %s) RETURNING requested_at",
        (request_id, client_id, outlet_id, controller_id, outlet_no),
    )
    row = await cur.fetchone()
    assert row is not None
    requested_at: dt.datetime = row[0]
    return requested_at


@dataclass(frozen=True, slots=True)
class MonthUsage:
    tariff_per_kwh: float
    currency: str
    timezone: str
    charges: int
    energy_wh: float


async def month_usage(
    conn: Conn, client_id: str, outlet_id: str, first_day: dt.date
) -> MonthUsage | None:
    """A client's stopped charges on one outlet in one month of the site's time zone, with
    the site's tariff; None for an unknown outlet."""
    cur = await conn.execute(
        "SELECT s.tariff_per_kwh, s.currency, s.timezone,"
        " count(c.charge_id), coalesce(sum(c.energy_wh), 0)"
        " FROM outlets o JOIN controllers USING (controller_id) JOIN sites s USING (site_id)"
        " LEFT JOIN charges c ON c.outlet_id = o.outlet_id AND c.client_id = %s"
        "  AND c.state = 'stopped'"
        "  AND date_trunc('month', c.stopped_at AT TIME ZONE s.timezone)::date = %s"
        " WHERE o.outlet_id = %s GROUP BY 1, 2, 3",
        (client_id, first_day, outlet_id),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    tariff, currency, timezone, count, energy_wh = row
    return MonthUsage(float(tariff), currency, timezone, int(count), float(energy_wh))


@dataclass(frozen=True, slots=True)
class UnansweredStart:
    charge_id: str
    controller_id: str
    outlet_no: int
    controller_offline: bool


async def unanswered_starts(conn: Conn, timeout_s: float) -> list[UnansweredStart]:
    """Starts still requested after ``timeout_s``, or whose controller went offline."""
    cur = await conn.execute(
        "SELECT c.charge_id, c.controller_id, c.outlet_no, s.online IS FALSE"
        " FROM charges c LEFT JOIN controller_status s USING (controller_id)"
        " WHERE c.state = 'requested' AND (s.online IS FALSE"
        "   OR c.requested_at < now() - make_interval(secs => %s))",
        (timeout_s,),
    )
    return [UnansweredStart(*row) for row in await cur.fetchall()]

"""Every SQL statement the partner API runs (the operator's stop reads charges here too),
beside the rows it reads.

Functions that only send a query (``select_charge``, ``outlet_route``) return the cursor,
so a caller in pipeline mode can send several before waiting for any.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, fields
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import class_row, dict_row

from charging import charges
from cloud_gateway import cursors, places
from cloud_gateway.models import (
    Charge,
    ChargeMeter,
    ChargeSearch,
    MeterReading,
    Place,
    PlaceOutlet,
    SiteSearch,
)

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
    energy_kwh: Decimal
    tariff_per_kwh: Decimal
    currency: str
    fee: Decimal
    first_minute: dt.datetime | None
    first_energy_wh: float | None
    last_minute: dt.datetime | None
    last_energy_wh: float | None
    expected_start_at: dt.datetime | None

    def json(self) -> dict[str, Any]:
        """What the partner sees of a charge (``models.Charge``)."""
        return self.model().model_dump(mode="json")

    def model(self) -> Charge:
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
            energy_kwh=float(self.energy_kwh),
            tariff_per_kwh=self.tariff_per_kwh,
            currency=self.currency,
            fee=self.fee,
            meter=ChargeMeter(
                first=_reading(self.first_minute, self.first_energy_wh),
                last=_reading(self.last_minute, self.last_energy_wh),
            ),
            expected_start_at=self.expected_start_at
            if self.state in ("queued", "paused")
            else None,
        )


def _reading(minute: dt.datetime | None, energy_wh: float | None) -> MeterReading | None:
    if minute is None or energy_wh is None:
        return None
    return MeterReading(at=minute, energy_wh=energy_wh)


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
    tariff_per_kwh: Decimal
    currency: str
    timezone: str
    charges: int
    energy_kwh: Decimal
    fee: Decimal


#: A client's stopped charges that count in a month: stopped in that month of their
#: site's time zone. The window in UTC (a day either side, more than any zone's offset;
#: in UTC whatever the session's time zone) lets the index narrow the scan.
async def month_usage(
    conn: Conn, client_id: str, outlet_id: str, first_day: dt.date
) -> MonthUsage | None:
    """A client's stopped charges on one outlet in one month of the site's time zone: the
    sums of their records (kept by month in ``usage_monthly``), and the tariff in force
    now; None for an unknown outlet."""
    cur = await conn.execute(
        "SELECT tariff_at(s.site_id, now()), s.currency, s.timezone,"
        # A month whose charges all moved out (their stop was corrected) counts as none.
        " coalesce(u.charges, 0), CASE WHEN u.charges > 0 THEN u.energy_kwh ELSE 0 END,"
        " CASE WHEN u.charges > 0 THEN u.fee ELSE 0 END"
        " FROM outlets o JOIN controllers USING (controller_id) JOIN sites s USING (site_id)"
        " LEFT JOIN usage_monthly u ON u.outlet_id = o.outlet_id"
        "  AND u.client_id = %(client)s AND u.month = %(month)s"
        " WHERE o.outlet_id = %(outlet)s",
        {"client": client_id, "outlet": outlet_id, "month": first_day},
    )
    row = await cur.fetchone()
    return None if row is None else MonthUsage(*row)


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One outlet's part of a client's month."""

    site_id: str
    name: str
    timezone: str
    currency: str
    outlet_id: str
    charges: int
    energy_kwh: Decimal
    fee: Decimal


async def client_usage(conn: Conn, client_id: str, first_day: dt.date) -> list[UsageRow]:
    """A client's month, per outlet with its site, ordered by site and outlet."""
    cur = conn.cursor(row_factory=class_row(UsageRow))
    await cur.execute(
        "SELECT s.site_id, s.name, s.timezone, s.currency, u.outlet_id, u.charges,"
        " u.energy_kwh, u.fee"
        " FROM usage_monthly u JOIN outlets o USING (outlet_id)"
        " JOIN controllers k ON k.controller_id = o.controller_id"
        " JOIN sites s ON s.site_id = k.site_id"
        " WHERE u.client_id = %(client)s AND u.month = %(month)s AND u.charges > 0"
        " ORDER BY 1, 5",
        {"client": client_id, "month": first_day},
    )
    return await cur.fetchall()


# --- history ------------------------------------------------------------------------------

_HISTORY_KEY = (int, str)  # (requested_at in µs since the epoch, the partner's charge id)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
#: Each filter of ``models.ChargeSearch``, by its name (also its parameter's).
_HISTORY_FILTERS = {
    "outlet_id": "outlet_id = %(outlet_id)s",
    "site_id": "controller_id IN (SELECT controller_id FROM controllers"
    " WHERE site_id = %(site_id)s)",
    "state": "state = %(state)s",
    "requested_from": "requested_at >= %(requested_from)s",
    "requested_before": "requested_at < %(requested_before)s",
}
_HISTORY = (
    f"SELECT {', '.join(CHARGE_COLUMNS)} FROM charges WHERE {{where}}"
    " ORDER BY requested_at DESC, partner_charge_id DESC LIMIT %(limit)s"
)


async def charge_history(
    conn: Conn, client_id: str, search: ChargeSearch
) -> tuple[list[ChargeRow], str | None]:
    """A page of the client's charges, newest request first, and the cursor after it."""
    params: dict[str, Any] = search.model_dump(include=set(_HISTORY_FILTERS), exclude_none=True)
    where = ["client_id = %(client)s", *(_HISTORY_FILTERS[name] for name in params)]
    params |= {"client": client_id, "limit": search.limit + 1}
    if search.cursor is not None:
        micros, params["after"] = cursors.decode(search.cursor, _HISTORY_KEY)
        try:
            params["at"] = _EPOCH + dt.timedelta(microseconds=int(micros))
        except OverflowError:  # no instant a page ended at
            raise cursors.invalid() from None
        where.append("(requested_at, partner_charge_id) < (%(at)s, %(after)s)")
    cur = charge_cursor(conn)
    await cur.execute(_HISTORY.format(where=" AND ".join(where)), params)
    return cursors.page(
        await cur.fetchall(),
        search.limit,
        lambda last: [
            (last.requested_at - _EPOCH) // dt.timedelta(microseconds=1),
            last.partner_charge_id,
        ],
    )


# --- places -------------------------------------------------------------------------------

#: A site's columns as a ``models.Place`` has them, from ``sites s`` (distance given).
_PLACE_COLUMNS = (
    "s.site_id, s.name, s.address, s.latitude, s.longitude, {distance} AS distance_km,"
    " s.opening_hours, s.access_notes, s.timezone, s.currency,"
    " tariff_at(s.site_id, now()) AS tariff_per_kwh,"
    " (SELECT count(*) FROM outlet_live_status v WHERE v.site_id = s.site_id"
    "  AND v.status = 'available') AS available_outlets"
)
_PLACE_OUTLETS = (
    "SELECT site_id, outlet_id, kind, rated_current_a, status FROM outlet_live_status v"
    " WHERE site_id = ANY(%(sites)s) {kept} ORDER BY site_id, outlet_id"
)
_SITE_KEY = (str,)
_NEAR_KEY = (float, str)


async def search_places(conn: Conn, search: SiteSearch) -> tuple[list[Place], str | None]:
    """A page of sites (``GET /v1/sites``) and the cursor after it."""
    params: dict[str, Any] = {"limit": search.limit + 1}
    kept = []  # conditions an outlet must meet to be listed (and its site with it)
    if search.available:
        kept.append("v.status = 'available'")
    if search.kind is not None:
        kept.append("v.kind = %(kind)s")
        params["kind"] = search.kind
    where = []
    centre = search.centre()
    if centre is not None:
        radius = search.radius_km or 10.0
        box = places.bounding_box(centre, radius)
        params |= {"lat": centre.latitude, "lon": centre.longitude, "radius": radius}
        params |= {"lat_lo": box.latitude[0], "lat_hi": box.latitude[1]}
        where.append("s.latitude BETWEEN %(lat_lo)s AND %(lat_hi)s")
        if box.longitude is not None:
            params |= {"lon_lo": box.longitude[0], "lon_hi": box.longitude[1]}
            where.append("s.longitude BETWEEN %(lon_lo)s AND %(lon_hi)s")
        where.append(f"{places.DISTANCE_SQL} <= %(radius)s")
        distance, order = places.DISTANCE_SQL, "distance_km, site_id"
        if search.cursor is not None:
            params["after_d"], params["after"] = cursors.decode(search.cursor, _NEAR_KEY)
            where.append(f"({places.DISTANCE_SQL}, s.site_id) > (%(after_d)s, %(after)s)")
    else:
        distance, order = "NULL::float8", "site_id"
        if search.cursor is not None:
            (params["after"],) = cursors.decode(search.cursor, _SITE_KEY)
            where.append("s.site_id > %(after)s")
    # The candidates in order (from the index; distances are arithmetic), then the outlet
    # filters on them one by one until the page is full: a filter costs a look at the
    # site's outlets, so it must not run on every site of a dense city (OFFSET 0 keeps the
    # planner from pushing it down into the scan). Then each page site's columns.
    outlet_filter = "true"
    if kept:
        outlet_filter = (
            "EXISTS (SELECT 1 FROM outlet_live_status v WHERE v.site_id = c.site_id AND "
            + " AND ".join(kept)
            + ")"
        )
    query = (
        f"SELECT {_PLACE_COLUMNS.format(distance='p.distance_km')} FROM ("
        f" SELECT c.site_id, c.distance_km FROM ("
        f"  SELECT s.site_id, {distance} AS distance_km FROM sites s"
        f"  WHERE {' AND '.join(where) or 'true'} ORDER BY {order} OFFSET 0) c"
        f" WHERE {outlet_filter} ORDER BY {order} LIMIT %(limit)s) p"
        f" JOIN sites s USING (site_id) ORDER BY {order}"
    )
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(query, params)
    rows, after = cursors.page(
        await cur.fetchall(),
        search.limit,
        lambda last: (
            [last["site_id"]] if centre is None else [last["distance_km"], last["site_id"]]
        ),
    )
    outlets = await _outlets_of(conn, [r["site_id"] for r in rows], kept, params)
    return [Place(**r, outlets=outlets.get(r["site_id"], [])) for r in rows], after


async def _outlets_of(
    conn: Conn, site_ids: list[str], kept: list[str], params: dict[str, Any]
) -> dict[str, list[PlaceOutlet]]:
    where = "".join(f" AND {c}" for c in kept)
    cur = await conn.execute(_PLACE_OUTLETS.format(kept=where), {**params, "sites": site_ids})
    found: dict[str, list[PlaceOutlet]] = {}
    for site_id, outlet_id, kind, rated, status in await cur.fetchall():
        found.setdefault(site_id, []).append(
            PlaceOutlet(outlet_id=outlet_id, kind=kind, rated_current_a=rated, status=status)
        )
    return found


async def site_detail(
    conn: Conn, site_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """A site's columns and its outlets with their latest reading; None if unknown."""
    cur = conn.cursor(row_factory=dict_row)
    await cur.execute(
        f"SELECT {_PLACE_COLUMNS.format(distance='NULL::float8')} FROM sites s"
        " WHERE s.site_id = %(site)s",
        {"site": site_id},
    )
    site = await cur.fetchone()
    if site is None:
        return None
    await cur.execute(
        "SELECT v.outlet_id, v.kind, v.rated_current_a, v.status,"
        " r.minute AS measured_at, r.current_a, r.energy_wh"
        " FROM outlet_live_status v LEFT JOIN LATERAL (SELECT minute, current_a, energy_wh"
        "   FROM outlet_readings r"
        "   WHERE r.controller_id = v.controller_id AND r.outlet_no = v.outlet_no"
        "   ORDER BY minute DESC LIMIT 1) r ON true"
        " WHERE v.site_id = %(site)s ORDER BY v.outlet_id",
        {"site": site_id},
    )
    return site, await cur.fetchall()


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

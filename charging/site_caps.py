"""A site's cap windows in the database: set, list and remove them (the operator API and
``chargeline site cap`` share these), each change recorded with who made it; and the
site's load as its allocator last measured it. The rules are ``charging.caps``'s."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from charging import caps
from charging.caps import Cap, Window
from kernel.times import utc, utc_or_none
from schemas.errors import NotFound

Conn = psycopg.AsyncConnection[Any]

_WINDOW = (
    "id, cap_a, extract(epoch FROM starts_at)::float8, extract(epoch FROM ends_at)::float8,"
    " reason, set_by, extract(epoch FROM created_at)::float8"
)


class UnknownSite(NotFound):
    """No site with that id."""


class UnknownWindow(NotFound):
    """No such cap window at that site (or it was removed)."""


async def _site(conn: Conn, site_id: str) -> tuple[float, float | None]:
    cur = await conn.execute(
        "SELECT contract_current_a, cap_margin_a FROM sites WHERE site_id = %s", (site_id,)
    )
    row = await cur.fetchone()
    if row is None:
        raise UnknownSite(f"no site {site_id!r}", site_id=site_id)
    return float(row[0]), None if row[1] is None else float(row[1])


async def windows(conn: Conn, site_id: str, *, now: float) -> list[Window]:
    """The site's windows in force now or later, oldest start first."""
    await _site(conn, site_id)
    cur = await conn.execute(
        f"SELECT {_WINDOW} FROM site_caps WHERE site_id = %s AND removed_at IS NULL"
        " AND (ends_at IS NULL OR ends_at > %s) ORDER BY starts_at, id",
        (site_id, utc(now)),
    )
    return [Window(*row) for row in await cur.fetchall()]


async def cap_of(conn: Conn, site_id: str, *, now: float) -> Cap:
    contract, margin = await _site(conn, site_id)
    return caps.in_force(
        contract_a=contract, margin_a=margin, windows=await windows(conn, site_id, now=now), now=now
    )


async def add_window(
    conn: Conn,
    site_id: str,
    *,
    cap_a: float,
    starts_at: float,
    ends_at: float | None,
    reason: str,
    note: str,
    set_by: str,
    now: float,
) -> Window:
    """Set the site's cap to ``cap_a`` from ``starts_at`` until ``ends_at`` (None: until
    removed), recorded as set by ``set_by``."""
    contract, _margin = await _site(conn, site_id)
    caps.check_window(
        contract_a=contract,
        cap_a=cap_a,
        starts_at=starts_at,
        ends_at=ends_at,
        reason=reason,
        now=now,
    )
    async with conn.transaction():
        cur = await conn.execute(
            "INSERT INTO site_caps (site_id, cap_a, starts_at, ends_at, reason, note, set_by)"
            f" VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING {_WINDOW}",
            (site_id, cap_a, utc(starts_at), utc_or_none(ends_at), reason, note, set_by),
        )
        row = await cur.fetchone()
        assert row is not None
        await conn.execute(
            "INSERT INTO operator_actions (operator, action, target, detail)"
            " VALUES (%s, 'site cap set', %s, %s)",
            (set_by, site_id, f"{cap_a:g} A ({reason}) window {row[0]}"),
        )
    return Window(*row)


async def remove_window(conn: Conn, site_id: str, window_id: int, *, removed_by: str) -> None:
    async with conn.transaction():
        cur = await conn.execute(
            "UPDATE site_caps SET removed_at = now(), removed_by = %s"
            " WHERE site_id = %s AND id = %s AND removed_at IS NULL RETURNING id",
            (removed_by, site_id, window_id),
        )
        if await cur.fetchone() is None:
            await _site(conn, site_id)
            raise UnknownWindow(f"no cap window {window_id} at site {site_id!r}", site_id=site_id)
        await conn.execute(
            "INSERT INTO operator_actions (operator, action, target, detail)"
            " VALUES (%s, 'site cap removed', %s, %s)",
            (removed_by, site_id, f"window {window_id}"),
        )


async def recent_load(conn: Conn, site_id: str, *, since: dt.datetime) -> list[dict[str, Any]]:
    """What the site's allocator measured and decided since ``since``, oldest first."""
    cur = await conn.execute(
        "SELECT extract(epoch FROM at)::float8, cap_a, building_a, outlets_a, allocated_a,"
        " charging, waiting FROM site_load WHERE site_id = %s AND at >= %s ORDER BY at",
        (site_id, since),
    )
    names = ("at", "cap_a", "building_a", "outlets_a", "allocated_a", "charging", "waiting")
    return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]


def window_json(w: Window) -> dict[str, Any]:
    return {
        "id": w.id,
        "cap_a": w.cap_a,
        "starts_at": utc(w.starts_at).isoformat(),
        "ends_at": None if w.ends_at is None else utc(w.ends_at).isoformat(),
        "reason": w.reason,
        "set_by": w.set_by,
        "created_at": utc(w.created_at).isoformat(),
    }

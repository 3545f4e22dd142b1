"""Outlet status notifications and controller presence, as webhooks.

* **Status requests.** The gateway records a request (``status_requests``) and publishes a
  ``StatusRequest``; the edge answers with an ``EdgeEvent`` of kind ``status`` carrying a
  fresh sample. ``answer`` turns that into one ``outlet.status`` webhook, once, however
  often the event is redelivered. A request the edge never answers (it went offline, the
  message was lost) is answered by ``answer_overdue`` from the outlet's last stored minute
  reading, marked ``"source": "last_reading"``, so the partner always hears back.
* **Presence.** ``presence_changes`` records birth and will messages and sends
  ``controller.online`` / ``controller.offline`` to the partners when a controller's state
  really changes (not when ingest re-reads a retained presence after a restart). A will
  from an older connection never overrides a newer birth: presence carries the time its
  connection started (``since``), and an older ``since`` loses.
* **Heartbeat.** The embedded broker does not enforce keepalive, so a hung controller may
  keep its connection, and its will unsent, forever. ``heard_from`` notes every live
  message (meter batches, events, acks); ``fell_silent`` takes a controller not heard from
  for ``silence_timeout_s`` offline, and hearing from it again brings it back.

Both run inside the caller's transaction, so the webhook exists exactly when the fact does.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable
from typing import Any

import psycopg

from charging import charges
from charging.outbox import enqueue
from kernel.times import utc
from schemas.messages import EdgeEvent, Presence

#: Who hears about controllers: partners with a webhook that may use outlets.
_PRESENCE_AUDIENCE = (
    "SELECT client_id FROM oauth_clients WHERE disabled_at IS NULL AND webhook_url IS NOT NULL"
    " AND scopes && ARRAY['charges:write', 'outlets:read']"
)


async def answer(conn: psycopg.AsyncConnection[Any], event: EdgeEvent) -> bool:
    """The edge answered a status request: webhook it. False: unknown or already answered."""
    cur = await conn.execute(
        "UPDATE status_requests SET answered_at = now(), answer = 'fresh'"
        " WHERE request_id = %s AND controller_id = %s AND outlet_no = %s"
        " AND answered_at IS NULL RETURNING client_id, outlet_id",
        (event.detail, event.controller_id, event.outlet),
    )
    row = await cur.fetchone()
    if row is None:
        return False
    client_id, outlet_id = row
    reading = {
        "at": event.at,
        "energy_wh": event.energy_wh,
        "voltage_v": event.voltage_v,
        "current_a": event.current_a,
        "breaker_on": event.breaker_on,
    }
    await _notify(
        conn,
        client_id=client_id,
        request_id=event.detail,
        outlet_id=outlet_id,
        source="edge",
        reading=reading,
    )
    return True


async def answer_overdue(conn: psycopg.AsyncConnection[Any], *, older_than_s: float) -> int:
    """Answer requests the edge left unanswered from the last stored reading; returns how many."""
    cur = await conn.execute(
        "UPDATE status_requests q SET answered_at = now(), answer = 'last_reading'"
        " WHERE answered_at IS NULL AND requested_at < now() - make_interval(secs => %s)"
        " RETURNING request_id, client_id, outlet_id, controller_id, outlet_no",
        (older_than_s,),
    )
    overdue = await cur.fetchall()
    for request_id, client_id, outlet_id, controller_id, outlet_no in overdue:
        cur = await conn.execute(
            "SELECT minute, energy_wh, voltage_v, current_a, breaker_on FROM outlet_readings"
            " WHERE controller_id = %s AND outlet_no = %s ORDER BY minute DESC LIMIT 1",
            (controller_id, outlet_no),
        )
        last = await cur.fetchone()
        reading = None
        if last is not None:
            minute, energy_wh, voltage_v, current_a, breaker_on = last
            reading = {
                "at": minute.timestamp(),
                "energy_wh": energy_wh,
                "voltage_v": voltage_v,
                "current_a": current_a,
                "breaker_on": breaker_on,
            }
        await _notify(
            conn,
            client_id=client_id,
            request_id=request_id,
            outlet_id=outlet_id,
            source="last_reading",
            reading=reading,
        )
    return len(overdue)


async def _notify(
    conn: psycopg.AsyncConnection[Any],
    *,
    client_id: str,
    request_id: str,
    outlet_id: str,
    source: str,
    reading: dict[str, Any] | None,
) -> None:
    cur = await conn.execute(
        "SELECT client_id, partner_charge_id, state, energy_wh FROM charges"
        f" WHERE outlet_id = %s AND state IN ({charges.ACTIVE_SQL})",
        (outlet_id,),
    )
    charge = await cur.fetchone()
    own = charge is not None and charge[0] == client_id
    # Another client's charge is only "charging": its id, state and energy stay its own.
    data: dict[str, Any] = {
        "request_id": request_id,
        "outlet_id": outlet_id,
        "source": source,
        "reading": reading,
        "charging": charge is not None,
        "charge": {"charge_id": charge[1], "state": charge[2], "energy_wh": round(charge[3], 3)}
        if charge is not None and own
        else None,
    }
    await enqueue(conn, client_id=client_id, kind="outlet.status", data=data)


async def presence_changes(
    conn: psycopg.AsyncConnection[Any], presence: Iterable[Presence]
) -> list[Presence]:
    """Record presence; webhook and return the controllers whose online state changed."""
    latest = {p.controller_id: p for p in presence}
    if not latest:
        return []
    cur = await conn.execute(
        "SELECT controller_id, online, presence_since FROM controller_status"
        " WHERE controller_id = ANY(%s) FOR UPDATE",
        (list(latest),),
    )
    known: dict[str, tuple[bool | None, dt.datetime | None]] = {
        cid: (online, since) for cid, online, since in await cur.fetchall()
    }
    fresh, changed = news(latest.values(), known)
    if fresh:
        async with conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO controller_status (controller_id, online, presence_since,"
                " presence_at, heard_at) VALUES (%s, %s, %s, now(), now())"
                " ON CONFLICT (controller_id) DO UPDATE SET online = excluded.online,"
                " presence_since = excluded.presence_since, presence_at = now(),"
                " heard_at = now(), silent = false",
                [(p.controller_id, p.online, utc(p.since)) for p in fresh],
            )
    await _announce(conn, [p for p in changed if p.online], "connected")
    offline = [p for p in changed if not p.online]
    for reason in sorted({p.reason or "disconnected" for p in offline}):
        await _announce(
            conn, [p for p in offline if (p.reason or "disconnected") == reason], reason
        )
    return changed


def news(
    presence: Iterable[Presence], known: dict[str, tuple[bool | None, dt.datetime | None]]
) -> tuple[list[Presence], list[Presence]]:
    """Pure: which presence messages to record, and which of those change online/offline.

    ``known``: per controller, the stored (online, presence_since).
    """
    fresh: list[Presence] = []
    changed: list[Presence] = []
    for p in presence:
        online, since = known.get(p.controller_id, (None, None))
        started = utc(p.since)  # compared as stored: microseconds
        if since is not None and started < since:
            continue  # a will (or birth) from an older connection
        if since == started and online is False and p.online:
            continue  # this connection's will already came: its birth is old news
        fresh.append(p)
        if online is not p.online:
            changed.append(p)
    return fresh, changed


async def heard_from(conn: psycopg.AsyncConnection[Any], controllers: Iterable[str]) -> list[str]:
    """Controllers spoke: note when; those offline for silence are back. Returns those."""
    cids = sorted(controllers)
    if not cids:
        return []
    cur = await conn.execute(
        "UPDATE controller_status s SET heard_at = now(), online = s.online OR before.silent,"
        " silent = false"
        " FROM (SELECT controller_id, silent FROM controller_status"
        "       WHERE controller_id = ANY(%s) FOR UPDATE) before"
        " WHERE s.controller_id = before.controller_id"
        " RETURNING s.controller_id, before.silent",
        (cids,),
    )
    back = [cid for cid, was_silent in await cur.fetchall() if was_silent]
    now = time.time()
    await _announce(
        conn, [Presence(controller_id=cid, online=True, since=now) for cid in back], "heard again"
    )
    return back


async def fell_silent(conn: psycopg.AsyncConnection[Any], *, timeout_s: float) -> list[str]:
    """Mark online controllers not heard from for ``timeout_s`` offline; returns those.

    The broker should have published their will, but the embedded one does not enforce
    keepalive: a hung controller keeps its connection open and says nothing.
    """
    cur = await conn.execute(
        "UPDATE controller_status SET online = false, silent = true"
        " WHERE online AND coalesce(heard_at, presence_at) < now() - make_interval(secs => %s)"
        " RETURNING controller_id, extract(epoch FROM coalesce(heard_at, presence_at))::float8",
        (timeout_s,),
    )
    silent = [
        Presence(controller_id=cid, online=False, since=last) for cid, last in await cur.fetchall()
    ]
    await _announce(conn, silent, f"silent for {timeout_s:g} s")
    return [p.controller_id for p in silent]


async def _announce(
    conn: psycopg.AsyncConnection[Any], changed: list[Presence], reason: str
) -> None:
    """``controller.online`` / ``controller.offline`` to every partner that uses outlets."""
    if not changed:
        return
    audience = [r[0] for r in await (await conn.execute(_PRESENCE_AUDIENCE)).fetchall()]
    if not audience:
        return
    cur = await conn.execute(
        "SELECT controller_id, array_agg(outlet_id ORDER BY outlet_no) FROM outlets"
        " WHERE controller_id = ANY(%s) GROUP BY controller_id",
        ([p.controller_id for p in changed],),
    )
    outlets = dict(await cur.fetchall())
    for p in changed:
        data = {
            "controller_id": p.controller_id,
            "online": p.online,
            "since": p.since,
            "reason": reason,
            "outlet_ids": outlets.get(p.controller_id, []),
        }
        kind = "controller.online" if p.online else "controller.offline"
        for client_id in audience:
            await enqueue(conn, client_id=client_id, kind=kind, data=data)

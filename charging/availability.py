"""Outlet availability as a change feed: ``outlet.availability`` webhooks, so a partner's
map stays live without polling.

An outlet is available when it is in service, its controller is online and no charge is
active on it (the database view ``outlet_live_status`` says so for every reader). Whatever
can change that (a charge's state, a controller's presence, an outlet's service) marks the
outlet in ``availability_changes`` in the same transaction, by trigger. ``publish`` takes
the marked outlets, looks at each one's status now, and decides (``decide``, pure) against
what partners last heard (``outlet_availability``):

* availability (available or not) unchanged since the last event: nothing is sent, so a
  charge that stops and a new one that starts between two looks send nothing (coalesced);
* changed, but the last event is younger than ``min_gap_s``: the outlet stays marked until
  the gap has passed, and is looked at again then (rate-limited per outlet);
* changed otherwise: one event to every partner with a webhook and the ``sites:read``
  scope, in the same transaction that records it as heard.

An outlet never announced counts as unavailable: registering outlets sends nothing until
their controller comes online. Events carry ``at``; a partner applies one only if it is
newer than the last it applied for the outlet (deliveries are retried independently).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg

from charging.outbox import enqueue

#: Who hears about availability: partners with a webhook that may read sites.
_AUDIENCE = (
    "SELECT client_id FROM oauth_clients WHERE disabled_at IS NULL AND webhook_url IS NOT NULL"
    " AND 'sites:read' = ANY(scopes)"
)


@dataclass(frozen=True, slots=True)
class Heard:
    """What partners last heard about an outlet."""

    available: bool
    at: dt.datetime


@dataclass(frozen=True, slots=True)
class Decision:
    send: bool  # publish the outlet's status now
    retry_at: dt.datetime | None  # not yet: look again at this instant


def decide(available: bool, heard: Heard | None, now: dt.datetime, min_gap_s: float) -> Decision:
    """Whether to tell partners that an outlet is (un)available now."""
    before = heard.available if heard is not None else False
    if available == before:
        return Decision(send=False, retry_at=None)
    if heard is not None:
        allowed = heard.at + dt.timedelta(seconds=min_gap_s)
        if now < allowed:
            return Decision(send=False, retry_at=allowed)
    return Decision(send=True, retry_at=None)


async def publish(conn: psycopg.AsyncConnection[Any], *, min_gap_s: float, batch: int = 500) -> int:
    """One pass over the marked outlets, in the caller's transaction; events sent."""
    cur = await conn.execute(
        "DELETE FROM availability_changes WHERE outlet_id IN ("
        " SELECT outlet_id FROM availability_changes WHERE changed_at <= now()"
        " ORDER BY changed_at LIMIT %s FOR UPDATE SKIP LOCKED)"
        " RETURNING outlet_id",
        (batch,),
    )
    marked = [row[0] for row in await cur.fetchall()]
    if not marked:
        return 0
    cur = await conn.execute(
        "SELECT v.outlet_id, v.site_id, v.status, h.status = 'available', h.published_at, now()"
        " FROM outlet_live_status v LEFT JOIN outlet_availability h USING (outlet_id)"
        " WHERE v.outlet_id = ANY(%s)",
        (marked,),
    )
    audience: list[str] | None = None
    sent = 0
    for outlet_id, site_id, status, was_available, heard_at, now in await cur.fetchall():
        heard = None if heard_at is None else Heard(bool(was_available), heard_at)
        decision = decide(status == "available", heard, now, min_gap_s)
        if decision.retry_at is not None:
            await conn.execute(
                "INSERT INTO availability_changes (outlet_id, changed_at) VALUES (%s, %s)"
                " ON CONFLICT (outlet_id) DO NOTHING",
                (outlet_id, decision.retry_at),
            )
            continue
        if not decision.send:
            continue
        await conn.execute(
            "INSERT INTO outlet_availability (outlet_id, status, published_at)"
            " VALUES (%s, %s, %s) ON CONFLICT (outlet_id) DO UPDATE"
            " SET status = excluded.status, published_at = excluded.published_at",
            (outlet_id, status, now),
        )
        if audience is None:
            audience = [r[0] for r in await (await conn.execute(_AUDIENCE)).fetchall()]
        data = {
            "outlet_id": outlet_id,
            "site_id": site_id,
            "available": status == "available",
            "status": status,
            "at": now.timestamp(),
        }
        for client_id in audience:
            await enqueue(conn, client_id=client_id, kind="outlet.availability", data=data)
        sent += 1
    return sent

"""The availability feed's publisher: one pass over the outlets marked as changed, in the
caller's transaction, sending what ``charging.availability.decide`` says to send (see that
module for the rules)."""

from __future__ import annotations

from typing import Any

import psycopg

from charging.availability import Heard, decide
from charging.outbox import enqueue

#: Who hears about availability: partners with a webhook that may read sites.
_AUDIENCE = (
    "SELECT client_id FROM oauth_clients WHERE disabled_at IS NULL AND webhook_url IS NOT NULL"
    " AND 'sites:read' = ANY(scopes)"
)


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

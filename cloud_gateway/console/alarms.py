"""The console's alarms: read, when the page asks, from the tables that hold their facts
(no second copy to keep in step), each with a key that names the one fact, so that an
operator's acknowledgement (``alarm_acks``) sticks to it and a new fact is a new alarm.

Kinds: a breaker that failed to move and an over-current trip (edge events), a controller
offline (or never heard from), a start that failed, a dead letter, a gap in a
controller's meter batches, and a partner whose webhooks keep failing.
"""

from __future__ import annotations

from typing import Any

import psycopg

from cloud_gateway.console.records import records

#: Events older than this are history, not alarms.
WINDOW = "7 days"

_ALARMS = f"""
WITH alarms (key, kind, subject, detail, since) AS (
    SELECT 'edge:' || id, kind, controller_id || ' outlet ' || outlet_no, detail, at
    FROM edge_events
    WHERE kind IN ('breaker_failed', 'overcurrent_trip') AND at > now() - interval '{WINDOW}'
  UNION ALL
    SELECT 'offline:' || c.controller_id || ':'
               || coalesce(extract(epoch FROM s.presence_since)::bigint::text, 'never'),
           'controller_offline', c.controller_id,
           CASE WHEN s.heard_at IS NULL THEN 'never heard from'
                ELSE 'last heard ' || to_char(s.heard_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI') || ' UTC' END,
           s.presence_since
    FROM controllers c LEFT JOIN controller_status s USING (controller_id)
    WHERE s.online IS NOT TRUE
  UNION ALL
    SELECT 'start:' || charge_id, 'start_failed', outlet_id, failure, stopped_at
    FROM charges WHERE state = 'failed' AND stopped_at > now() - interval '{WINDOW}'
  UNION ALL
    SELECT 'dead:' || id, 'dead_letter', coalesce(controller_id, topic), reason, received_at
    FROM dead_letters WHERE received_at > now() - interval '{WINDOW}'
  UNION ALL
    SELECT 'gap:' || controller_id || ':' || missing_from || '-' || missing_to, 'seq_gap',
           controller_id, 'meter batches ' || missing_from || '–' || missing_to || ' missing', NULL
    FROM meter_seq_gap_ranges
  UNION ALL
    SELECT 'webhooks:' || client_id || ':' || min(event_id), 'webhooks_failing', client_id,
           count(*) || ' events waiting; ' || coalesce(max(last_error), ''), min(created_at)
    FROM webhook_outbox
    WHERE delivered_at IS NULL AND gave_up_at IS NULL AND attempts > 0
    GROUP BY client_id
)
SELECT a.key, a.kind, a.subject, a.detail, a.since, k.acked_by, k.acked_at
FROM alarms a LEFT JOIN alarm_acks k USING (key)
ORDER BY k.key IS NOT NULL, a.since DESC NULLS LAST
LIMIT 200
"""

KINDS = {
    "breaker_failed": "breaker failed to move",
    "overcurrent_trip": "over-current trip",
    "controller_offline": "controller offline",
    "start_failed": "start failed",
    "dead_letter": "dead letter",
    "seq_gap": "meter batches missing",
    "webhooks_failing": "webhooks failing",
}


async def current(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    """The alarms, unacknowledged first, newest first."""
    return await records(conn, _ALARMS)


async def acknowledge(conn: psycopg.AsyncConnection[Any], key: str, operator: str) -> bool:
    """Acknowledge the alarm ``key`` (once: the first operator's stays); False if it was."""
    cur = await conn.execute(
        "INSERT INTO alarm_acks (key, acked_by) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (key[:300], operator),
    )
    return cur.rowcount == 1

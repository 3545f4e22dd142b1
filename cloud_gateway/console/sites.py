"""The console's Sites page: each site's contract current against what its outlets draw
(the last 24 hours, a minute at a time), its controllers online, its outlets by status
(and how many are faulted: a breaker that failed to move or tripped on over-current in
the last 7 days, not yet acknowledged on the Alarms page), and its energy today and this
month (the analytics views, in the site's time zone). Paused outlets come with load
management (issue 19)."""

from __future__ import annotations

from typing import Any

import psycopg

from cloud_gateway.console.records import records

_SITES = """
SELECT s.site_id, s.name, s.contract_current_a, s.timezone,
       (SELECT count(*) FROM controllers c JOIN controller_status t USING (controller_id)
        WHERE c.site_id = s.site_id AND t.online) AS online,
       (SELECT count(*) FROM controllers c WHERE c.site_id = s.site_id) AS controllers,
       (SELECT coalesce(jsonb_object_agg(status, n), '{}') FROM (
            SELECT status, count(*) AS n FROM outlet_live_status o
            WHERE o.site_id = s.site_id GROUP BY status) x) AS outlets,
       (SELECT count(DISTINCT (e.controller_id, e.outlet_no))
        FROM edge_events e JOIN controllers c USING (controller_id)
        WHERE c.site_id = s.site_id AND e.kind IN ('breaker_failed', 'overcurrent_trip')
          AND e.at > now() - interval '7 days'
          AND NOT EXISTS (SELECT 1 FROM alarm_acks k WHERE k.key = 'edge:' || e.id)) AS faulted,
       (SELECT outlets_wh FROM energy_site_daily d
        WHERE d.site_id = s.site_id AND d.day = (now() AT TIME ZONE s.timezone)::date) AS today_wh,
       (SELECT outlets_wh FROM energy_site_monthly m
        WHERE m.site_id = s.site_id
          AND m.month = date_trunc('month', now() AT TIME ZONE s.timezone)::date) AS month_wh
FROM sites s ORDER BY s.site_id
"""

#: The site's outlets' current summed per minute (what the breakers carry beside the
#: building), the last 24 hours.
_LOAD = """
SELECT extract(epoch FROM r.minute)::bigint, sum(r.current_a)::float8
FROM outlet_readings r JOIN controllers c USING (controller_id)
WHERE c.site_id = %s AND r.minute > now() - interval '24 hours'
GROUP BY r.minute ORDER BY r.minute
"""

STATUSES = ("charging", "available", "offline", "out_of_service")


async def sites(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    return await records(conn, _SITES)


async def load(conn: psycopg.AsyncConnection[Any], site_id: str) -> dict[str, Any] | None:
    """The chart's data for uPlot: times, the outlets' current, and the contract current."""
    cap = await (
        await conn.execute("SELECT contract_current_a FROM sites WHERE site_id = %s", (site_id,))
    ).fetchone()
    if cap is None:
        return None
    rows = await (await conn.execute(_LOAD, (site_id,))).fetchall()
    return {
        "site_id": site_id,
        "t": [t for t, _ in rows],
        "current_a": [round(a, 2) for _, a in rows],
        "cap_a": cap[0],
    }

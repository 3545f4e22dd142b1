"""The console's outlet page and the lists of partners and controllers: what the
database knows of one outlet (its status, last minute, current charge, the lifecycle of
its last commands and its recent edge events), and who talks to chargeline (no secret is
ever read: the gateway's role cannot)."""

from __future__ import annotations

from typing import Any

import psycopg

from cloud_gateway.console.records import records

_OUTLET = """
SELECT o.outlet_id, o.controller_id, o.outlet_no, o.site_id, o.kind, o.rated_current_a,
       o.status, s.heard_at,
       (SELECT row_to_json(r) FROM (
            SELECT minute, energy_wh, voltage_v, current_a, breaker_on FROM outlet_readings
            WHERE controller_id = o.controller_id AND outlet_no = o.outlet_no
            ORDER BY minute DESC LIMIT 1) r) AS last_minute,
       (SELECT row_to_json(c) FROM (
            SELECT partner_charge_id, state, requested_at, energy_wh FROM charges
            WHERE outlet_id = o.outlet_id AND state IN ('requested', 'queued', 'on', 'drawing', 'paused', 'stopping')
            ORDER BY requested_at DESC LIMIT 1) c) AS charge
FROM outlet_live_status o LEFT JOIN controller_status s USING (controller_id)
WHERE o.outlet_id = %s
"""

#: Each command's lifecycle: sent, acknowledged (with the breaker's state), and for a
#: start the current's rise (from its charge).
_COMMANDS = """
SELECT m.generation, m.turn_on, m.issued_by, m.issued_at, m.acked_at, m.outcome,
       m.breaker_on, c.partner_charge_id, CASE WHEN m.turn_on THEN c.rise_at END AS rise_at
FROM commands m LEFT JOIN charges c USING (charge_id)
WHERE m.controller_id = %s AND m.outlet_no = %s
ORDER BY m.generation DESC LIMIT 10
"""

_EVENTS = """
SELECT at, kind, current_a, breaker_on, detail FROM edge_events
WHERE controller_id = %s AND outlet_no = %s ORDER BY at DESC LIMIT 10
"""

_CLIENTS = """
SELECT client_id, name, scopes, webhook_url, disabled_at FROM oauth_clients ORDER BY name
"""

_CONTROLLERS = """
SELECT c.controller_id, c.site_id, s.online, s.heard_at, s.firmware,
       (SELECT count(*) FROM outlets o WHERE o.controller_id = c.controller_id) AS outlets
FROM controllers c LEFT JOIN controller_status s USING (controller_id)
ORDER BY c.site_id, c.controller_id
"""


async def outlet(conn: psycopg.AsyncConnection[Any], outlet_id: str) -> dict[str, Any] | None:
    found = await records(conn, _OUTLET, (outlet_id,))
    if not found:
        return None
    page = found[0]
    place = (page["controller_id"], page["outlet_no"])
    page["commands"] = await records(conn, _COMMANDS, place)
    page["events"] = await records(conn, _EVENTS, place)
    return page


async def set_in_service(
    conn: psycopg.AsyncConnection[Any], outlet_id: str, in_service: bool
) -> bool:
    """Put an outlet out of service (no new starts: partners see it so) or back."""
    cur = await conn.execute(
        "UPDATE outlets SET in_service = %s WHERE outlet_id = %s AND in_service <> %s",
        (in_service, outlet_id, in_service),
    )
    return cur.rowcount == 1


async def clients(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    return await records(conn, _CLIENTS)


async def controllers(conn: psycopg.AsyncConnection[Any]) -> list[dict[str, Any]]:
    return await records(conn, _CONTROLLERS)

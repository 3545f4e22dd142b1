"""The console's page for one charge: its timeline (requested, each command sent and
answered, started, the current's rise, stopped or failed), its energy and fee, and the
webhooks the partner was sent about it."""

from __future__ import annotations

from typing import Any

import psycopg

from cloud_gateway.console.records import records
from cloud_gateway.console.timeline import timeline

_CHARGE = """
SELECT c.charge_id, c.partner_charge_id, c.client_id, k.name AS client, c.outlet_id,
       c.state, c.requested_at, c.started_at, c.rise_at, c.stopped_at, c.end_at,
       c.stop_reason, c.failure, c.energy_wh, c.energy_kwh, c.tariff_per_kwh, c.currency, c.fee
FROM charges c LEFT JOIN oauth_clients k USING (client_id)
WHERE c.charge_id = %s
"""

_COMMANDS = """
SELECT generation, turn_on, issued_by, issued_at, acked_at, outcome, breaker_on
FROM commands WHERE charge_id = %s ORDER BY generation
"""

_WEBHOOKS = """
SELECT kind, created_at, delivered_at, attempts, last_error FROM webhook_outbox
WHERE charge_id = %s ORDER BY event_id
"""


async def charge(conn: psycopg.AsyncConnection[Any], charge_id: str) -> dict[str, Any] | None:
    found = await records(conn, _CHARGE, (charge_id,))
    if not found:
        return None
    page = found[0]
    page["commands"] = await records(conn, _COMMANDS, (charge_id,))
    page["webhooks"] = await records(conn, _WEBHOOKS, (charge_id,))
    page["timeline"] = timeline(page)
    return page

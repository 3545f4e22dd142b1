"""The webhook outbox, producer side: events for partners, written with their facts.

Whoever records a fact a partner should hear about (a charge started, the current rose,
a status answer, a controller went offline) calls ``enqueue`` inside the same database
transaction, so an event exists exactly when its fact does. ``cloud_gateway.webhooks``
delivers what is here: signed, in order per charge, retried until it gets through.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import psycopg

from schemas import events

#: Only for a client with a webhook URL: one without has asked for no webhooks, and its
#: events would only be retried, and warned about, for 72 hours.
_INSERT_EVENT = (
    "INSERT INTO webhook_outbox (public_id, client_id, charge_id, kind, body)"
    " SELECT %s, client_id, %s, %s, %s FROM oauth_clients"
    " WHERE client_id = %s AND webhook_url IS NOT NULL"
)


def event_body(kind: str, data: dict[str, Any]) -> tuple[str, str]:
    """A new event's public id (``evt_…``) and its JSON body, as partners receive it."""
    public_id = f"evt_{secrets.token_hex(12)}"
    body = {"id": public_id, "type": kind, "created_at": time.time(), "data": data}
    return public_id, json.dumps(body)


async def enqueue(
    conn: psycopg.AsyncConnection[Any],
    *,
    client_id: str,
    kind: str,
    data: dict[str, Any],
    charge_id: str | None = None,
) -> str:
    """Add an event in the caller's transaction (if the client has a webhook URL);
    returns its public id (``evt_…``).

    ``charge_id`` puts the event in its charge's delivery order.
    """
    events.check(kind, data)  # the contract the OpenAPI document publishes (schemas/events.py)
    public_id, body = event_body(kind, data)
    await conn.execute(_INSERT_EVENT, (public_id, charge_id, kind, body, client_id))
    return public_id

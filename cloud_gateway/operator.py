"""What the operator does to charges from the command line (``chargeline charges``).

Stopping a charge as the operator is what the partner's stop does (an OFF command with
the next generation, recorded with the charge's ``StopRequested`` in one transaction,
then published retained), on the operator's authority instead of a token's: it works for
a disabled or removed client too, whose charges must not run on unattended. The edge's
acknowledgement reaches the charge through ingest, as for every command.

The command line connects to the broker with its own identity of the gateway role (for
example ``chargeline broker credentials issue svc_operator --role gateway``), given in
``CHARGELINE_MQTT_URL``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg

from charging import lifecycle
from cloud_gateway import commands, repository
from cloud_gateway.settings import GatewaySettings
from kernel import mqtt
from schemas.errors import NotFound


class ChargeNotFound(NotFound):
    """No charge with that id (for that client, when one is named)."""


@dataclass(frozen=True)
class Stopped:
    charge_id: str
    client_id: str
    outlet_id: str
    state_before: str
    generation: int | None  # None: nothing to stop (it had stopped, or was stopping)


async def stop_charge(
    settings: GatewaySettings, database_url: str, charge: str, *, client_id: str | None = None
) -> Stopped:
    """Stop ``charge``: a client's own id with ``client_id``, else the system's key."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        if client_id:
            cur = await repository.select_own_charge(conn, client_id, charge)
        else:
            cur = await repository.select_charge(conn, charge)
        row = await cur.fetchone()
        if row is None:
            raise ChargeNotFound(
                f"no charge {charge!r}" + (f" of client {client_id!r}" if client_id else "")
            )
        charge_id, owner, outlet_id, state = row.charge_id, row.client_id, row.outlet_id, row.state
        if lifecycle.State(state) not in lifecycle.STOPPABLE:
            return Stopped(charge_id, owner, outlet_id, state, None)
        async with conn.transaction():
            want = await commands.record_stop(
                conn,
                charge_id=charge_id,
                controller_id=row.controller_id,
                outlet=row.outlet_no,
                issued_by="operator",
                reason="operator stopped",
                now=settings.now(),
            )
    url = settings.mqtt
    identifier = url.username or f"chargeline-operator-{os.getpid()}"
    async with mqtt.client(url, identifier=identifier) as client:
        await commands.publish(client, settings.topics, want)
    return Stopped(charge_id, owner, outlet_id, state, want.generation)

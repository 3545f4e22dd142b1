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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from charging import commands as command_records
from charging import lifecycle
from cloud_gateway import commands, repository
from cloud_gateway.repository import ChargeRow
from cloud_gateway.settings import GatewaySettings
from kernel import mqtt
from schemas.errors import NotFound
from schemas.messages import DesiredState


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
        want = await record_stop(conn, row, issued_by="operator", now=settings.now())
    stopped = Stopped(
        row.charge_id, row.client_id, row.outlet_id, row.state, want and want.generation
    )
    if want is None:
        return stopped
    url = settings.mqtt
    identifier = url.username or f"chargeline-operator-{os.getpid()}"
    async with mqtt.client(url, identifier=identifier) as client:
        await commands.publish(client, settings.topics, want)
    return stopped


async def record_stop(
    conn: psycopg.AsyncConnection[Any],
    row: ChargeRow,
    *,
    issued_by: str,
    now: float,
    then: Callable[[psycopg.AsyncConnection[Any]], Awaitable[None]] | None = None,
) -> DesiredState | None:
    """Record an operator's stop of the charge ``row`` in one transaction (with ``then``,
    for example the console's record of who did it): the OFF to publish after the commit,
    or None when there is nothing to stop (it had stopped, or was stopping)."""
    if lifecycle.State(row.state) not in lifecycle.STOPPABLE:
        return None
    async with conn.transaction():
        want = await command_records.record_stop(
            conn,
            charge_id=row.charge_id,
            controller_id=row.controller_id,
            outlet=row.outlet_no,
            issued_by=issued_by,
            reason="operator stopped",
            now=now,
        )
        if then is not None:
            await then(conn)
    return want

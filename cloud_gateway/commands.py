"""Turning a decision about an outlet into a retained, versioned desired state.

``issue`` allocates the outlet's next generation and records the command (who, when,
what) in one transaction, then publishes the ``DesiredState`` retained with QoS 1. The
generation only grows, so the edge can tell new commands from stale ones; the record is
the audit trail, completed by ingest when the edge's ``CommandAck`` arrives.

``AckWaiter`` lets an API call wait a short time for the edge's answer: it subscribes to
the acknowledgements and resolves the future registered for (controller, outlet,
generation). Ingest records the same acknowledgements durably; this is only the fast path.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, TypedDict, Unpack

import aiomqtt
import psycopg

from charging import charges, lifecycle
from kernel.times import utc, utc_or_none
from schemas.codec import CodecError, decode, encode
from schemas.messages import CommandAck, DesiredState
from schemas.topics import TopicKind, Topics

log = logging.getLogger(__name__)

#: Allocate the next generation of the outlet(s) in ``target`` and write the audit row:
#: one statement, one round trip. ``target`` is a CTE naming (controller_id, outlet_no).
_ALLOCATE_AND_RECORD = """
WITH {target}, next AS (
    INSERT INTO outlet_generations (controller_id, outlet_no, generation)
    SELECT controller_id, outlet_no, 1 FROM target
    ON CONFLICT (controller_id, outlet_no)
    DO UPDATE SET generation = outlet_generations.generation + 1
    RETURNING controller_id, outlet_no, generation
)
INSERT INTO commands (controller_id, outlet_no, generation, turn_on, charge_id, end_at,
                      issued_at, issued_by)
SELECT controller_id, outlet_no, generation, %(on)s, %(charge_id)s, %(end_at)s,
       %(issued_at)s, %(issued_by)s
FROM next
RETURNING generation, controller_id, outlet_no
"""

#: A command for one outlet, always written.
_RECORD = _ALLOCATE_AND_RECORD.format(
    target="target AS (SELECT %(controller_id)s::text AS controller_id,"
    " %(outlet)s::smallint AS outlet_no)"
)

#: A charge's start command, for an outlet given by its public id: written only if the
#: outlet exists, its controller is online and no charge has this id yet. Otherwise
#: nothing is written and no row comes back (the caller then finds out why). So a start
#: needs no lookup round trip before its transaction.
_RECORD_START = _ALLOCATE_AND_RECORD.format(
    target="""target AS (
    SELECT o.controller_id, o.outlet_no FROM outlets o
    JOIN controller_status s ON s.controller_id = o.controller_id AND s.online
    WHERE o.outlet_id = %(outlet_id)s AND o.in_service
      AND NOT EXISTS (SELECT 1 FROM charges WHERE charge_id = %(charge_id)s)
)"""
)


class Recorded:
    """A command sent to the database in a pipeline; its generation is known once the
    pipeline has synced (at the latest when its transaction commits)."""

    def __init__(self, cursor: psycopg.AsyncCursor[Any], want: DesiredState) -> None:
        self._cursor = cursor
        self._want = want

    async def desired(self) -> DesiredState | None:
        """The command as the edge gets it; None if a guarded start wrote nothing."""
        row = await self._cursor.fetchone()
        if row is None:
            return None
        generation, controller_id, outlet = row
        return self._want._replace(
            generation=int(generation), controller_id=controller_id, outlet=int(outlet)
        )


class Command(TypedDict):
    """One command's fields, as ``send_record`` and ``record`` take them (keywords)."""

    controller_id: str
    outlet: int
    on: bool
    charge_id: str | None
    end_at: float | None
    issued_at: float
    issued_by: str


async def send_record(conn: psycopg.AsyncConnection[Any], **command: Unpack[Command]) -> Recorded:
    """Allocate the generation and write the audit row, in the caller's transaction,
    without waiting for the answer."""
    cur = await conn.execute(
        _RECORD,
        {
            **command,
            "end_at": utc_or_none(command["end_at"]),
            "issued_at": utc(command["issued_at"]),
        },
    )
    return Recorded(
        cur,
        DesiredState(
            controller_id=command["controller_id"],
            outlet=command["outlet"],
            on=command["on"],
            generation=0,
            charge_id=command["charge_id"],
            end_at=command["end_at"],
            issued_at=command["issued_at"],
        ),
    )


async def send_start(
    conn: psycopg.AsyncConnection[Any],
    *,
    outlet_id: str,
    charge_id: str,
    end_at: float,
    issued_at: float,
    issued_by: str,
) -> Recorded:
    """``send_record`` for a charge's start (``_RECORD_START``): ON for the outlet with this
    public id, unless it is unknown, out of service, its controller offline, or the charge
    id taken."""
    cur = await conn.execute(
        _RECORD_START,
        {
            "outlet_id": outlet_id,
            "on": True,
            "charge_id": charge_id,
            "end_at": utc(end_at),
            "issued_at": utc(issued_at),
            "issued_by": issued_by,
        },
    )
    return Recorded(
        cur,
        DesiredState(
            controller_id="",
            outlet=0,
            on=True,
            generation=0,
            charge_id=charge_id,
            end_at=end_at,
            issued_at=issued_at,
        ),
    )


async def record(conn: psycopg.AsyncConnection[Any], **command: Unpack[Command]) -> DesiredState:
    """``send_record`` and wait for the generation."""
    want = await (await send_record(conn, **command)).desired()
    assert want is not None  # an unguarded command always writes its row
    return want


async def record_stop(
    conn: psycopg.AsyncConnection[Any],
    *,
    charge_id: str,
    controller_id: str,
    outlet: int,
    issued_by: str,
    reason: str,
    now: float,
) -> DesiredState:
    """Stop a charge, in the caller's transaction: the OFF command with the outlet's next
    generation and the charge's ``StopRequested``, together. Publish after the commit."""
    want = await record(
        conn,
        controller_id=controller_id,
        outlet=outlet,
        on=False,
        charge_id=charge_id,
        end_at=None,
        issued_at=now,
        issued_by=issued_by,
    )
    await charges.apply(conn, charge_id, lifecycle.StopRequested(want.generation, reason, now))
    return want


async def publish(client: aiomqtt.Client, topics: Topics, want: DesiredState) -> None:
    """Publish after the commit: retained, QoS 1 (the broker acknowledges receipt)."""
    await client.publish(
        topics.desired(want.controller_id, want.outlet), encode(want), qos=1, retain=True
    )


class AckWaiter:
    """Futures for command acknowledgements, fed by an MQTT subscription to ``ack`` topics."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._waiting: dict[tuple[str, int, int], asyncio.Future[CommandAck]] = {}

    @property
    def subscription(self) -> str:
        return self.topics.all_controllers(TopicKind.ACK)

    def expect(
        self, controller_id: str, outlet: int, generation: int
    ) -> asyncio.Future[CommandAck]:
        """Register before publishing, so an instant answer is not missed."""
        key = (controller_id, outlet, generation)
        future = self._waiting.get(key)
        if future is None:
            future = self._waiting[key] = asyncio.get_running_loop().create_future()
        return future

    def forget(self, controller_id: str, outlet: int, generation: int) -> None:
        self._waiting.pop((controller_id, outlet, generation), None)

    def deliver(self, topic: str, payload: bytes) -> None:
        parsed = self.topics.parse(topic)
        if parsed is None or parsed.kind is not TopicKind.ACK:
            return
        try:
            ack = decode(CommandAck, payload)
        except CodecError as exc:
            log.warning("bad command ack on %s: %s", topic, exc)  # ingest keeps it as a dead letter
            return
        if ack.controller_id != parsed.controller_id:
            return
        future = self._waiting.pop((ack.controller_id, ack.outlet, ack.generation), None)
        if future is not None and not future.done():
            future.set_result(ack)

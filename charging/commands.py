"""A command for an outlet, recorded: the outlet's next ``generation`` and the audit row.

``send_record`` allocates the outlet's next generation and writes the command (who, when,
what) in the caller's transaction; ``send_start`` does so for a charge's start, guarded
(the outlet known, in service, its controller online, the charge id new). The generation
only grows, so an edge tells new commands from stale ones; the record is the audit trail,
completed by ingest when the edge's ``CommandAck`` arrives. Publishing the desired state
after the commit is the caller's: the gateway for partners' and operators' commands, the
OCPP bridge for a charge a resident started at a station with a card.
"""

from __future__ import annotations

from typing import Any, TypedDict, Unpack

import psycopg

from charging import charges, lifecycle
from kernel.times import utc, utc_or_none
from schemas.messages import DesiredState

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


async def record_start(
    conn: psycopg.AsyncConnection[Any],
    *,
    outlet_id: str,
    charge_id: str,
    partner_charge_id: str,
    client_id: str,
    end_at: float,
    issued_at: float,
    issued_by: str,
    request_sha256: bytes,
) -> Recorded:
    """A charge's start, in the caller's transaction: its guarded ON command
    (``send_start``) and the charge in ``requested`` (``charges.create``). A partner's
    start and a station's card start are recorded alike. Pipelined: nothing waits for the
    command's answer (``Recorded.desired``, None when the guards wrote nothing)."""
    recorded = await send_start(
        conn,
        outlet_id=outlet_id,
        charge_id=charge_id,
        end_at=end_at,
        issued_at=issued_at,
        issued_by=issued_by,
    )
    await charges.create(
        conn,
        charge_id=charge_id,
        partner_charge_id=partner_charge_id,
        client_id=client_id,
        outlet_id=outlet_id,
        end_at=end_at,
        request_sha256=request_sha256,
    )
    return recorded


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

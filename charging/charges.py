"""Charges in the database: the lifecycle applied under a row lock, webhooks in the same
transaction.

``apply(conn, charge_id, event)`` locks the charge row, runs ``lifecycle.step`` and writes
the new state and any webhooks together, so a fact and its webhook commit or roll back as
one. Several processes (the gateway on its fast path, ingest from the durable stream) may
apply the same event: the lock serialises them and the state machine ignores repeats, so
each webhook is written once. ``apply_many`` does the same for many charges in a few
statements; ingest feeds a whole write's readings with ``read_unlocked``, ``step_rows``
and ``write_stepped``, stepping before it locks and writing only rows still as it read
them. ``apply_to_new`` is the gateway's
one-round-trip variant for a charge it has just created: it writes only if the row is
untouched since.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any, NamedTuple

import psycopg
from psycopg import sql

from charging import lifecycle
from charging.lifecycle import Charge, Event, Notice, Reading, State
from charging.outbox import event_body
from kernel.times import utc_or_none
from schemas.events import check as check_event

#: ``lifecycle.ACTIVE`` as an SQL list, literal so that the partial index on active
#: charges (``charges_one_active_per_outlet``) serves queries using ``state IN (…)``.
ACTIVE_SQL = ", ".join(sorted(f"'{state.value}'" for state in lifecycle.ACTIVE))

#: Charges that still take events: active, or stopped with the stop not yet announced.
#: Literal, as the predicate of the partial index ``charges_open`` (0021), which it must
#: match for the planner to use that index.
OPEN_SQL = f"c.state IN ({ACTIVE_SQL}) OR (c.state = 'stopped' AND NOT c.reported)"

OutletKey = tuple[str, int]

#: A charge's row as ``_charge`` takes it. The lifecycle's times come as epoch seconds
#: (``float8``), and ``_values`` gives them back so: converting datetimes in Python cost
#: more than the rest of stepping a charge, thousands of times a write at an evening peak.
_COLUMNS = (
    "charge_id, state, start_generation, stop_generation, extract(epoch FROM started_at)::float8,"
    " extract(epoch FROM rise_at)::float8, extract(epoch FROM stopped_at)::float8,"
    " stop_reason, failure, extract(epoch FROM first_minute)::float8, first_energy_wh,"
    " extract(epoch FROM last_minute)::float8, last_energy_wh,"
    " energy_wh, reported, client_id, outlet_id, end_at, partner_charge_id,"
    " extract(epoch FROM expected_start_at)::float8"
)


def internal_id(client_id: str, partner_charge_id: str) -> str:
    """The system-wide key of a client's charge: its id is the client's own, so two clients
    may both use ``order-1`` and neither can take, or detect, the other's. Deterministic,
    so a repeated start finds its charge; 26 base32 characters (130 bits) of SHA-256,
    within the wire contract's charge id alphabet."""
    digest = hashlib.sha256(f"{client_id}\n{partner_charge_id}".encode()).digest()
    return "ch" + base64.b32encode(digest).decode().lower()[:26]


def _reading(minute: float | None, energy: float | None) -> Reading | None:
    return None if minute is None or energy is None else Reading(minute, energy)


_STATES = {state.value: state for state in State}


def _charge(row: tuple[Any, ...]) -> Charge:
    """A charge from its row as ``_COLUMNS`` reads it (positional: see ``_with_count`` in
    the lifecycle)."""
    return Charge(
        row[0],
        _STATES[row[1]],
        row[2],
        row[3],
        row[4],
        row[5],
        row[6],
        row[7],
        row[8],
        _reading(row[9], row[10]),
        _reading(row[11], row[12]),
        row[13],
        row[14],
    )


async def create(
    conn: psycopg.AsyncConnection[Any],
    *,
    charge_id: str,
    partner_charge_id: str,
    client_id: str,
    outlet_id: str,
    end_at: float,
    request_sha256: bytes,
) -> None:
    """A new charge in ``requested``, for the start command recorded for it earlier in this
    transaction (``charging.commands.send_start``): its controller, outlet and start
    generation are that command's. Without such a command (the start was refused) nothing
    is written, so a pipelined caller need not wait for the command's answer.
    UniqueViolation means the outlet is busy.

    It also re-arms the outlet's current-rise detector: the breaker is OFF before a start,
    so nothing is drawn, and only observations from now on count (a backlog from the
    previous charge must not announce this one's rise).
    """
    await conn.execute(
        "INSERT INTO charges (charge_id, partner_charge_id, client_id, outlet_id,"
        " controller_id, outlet_no, request_sha256, state, start_generation, end_at,"
        " tariff_per_kwh, currency)"
        " SELECT %s, %s, %s, %s, c.controller_id, c.outlet_no, %s, %s, c.generation, %s,"
        # The price in force now, at the request: the charge keeps it (its fee follows).
        "  tariff_at(k.site_id, now()), s.currency"
        # An ON command names its charge only in the transaction that creates the charge;
        # so while no charge has this id, the one found is the one just recorded.
        " FROM commands c JOIN controllers k USING (controller_id) JOIN sites s USING (site_id)"
        " WHERE c.charge_id = %s AND c.turn_on"
        " AND NOT EXISTS (SELECT 1 FROM charges WHERE charge_id = %s)",
        (
            charge_id,
            partner_charge_id,
            client_id,
            outlet_id,
            request_sha256,
            State.REQUESTED.value,
            utc_or_none(end_at),
            charge_id,
            charge_id,
        ),
    )
    # From the start command's issue time (the installation's clock, which an accelerated
    # one shares with its edges), with 2 s of slack: the edge stamps its events with its
    # estimate of cloud time, which may lag a little; the breaker was OFF for longer than
    # that before any start. (A station's card charge has been drawing since just before:
    # what it drew before the charge was recorded must not spend the charge's rise.)
    await conn.execute(
        "INSERT INTO outlet_current_state"
        " SELECT h.controller_id, h.outlet_no, false, extract(epoch FROM c.issued_at) - 2"
        " FROM charges h JOIN commands c ON c.controller_id = h.controller_id"
        "  AND c.outlet_no = h.outlet_no AND c.generation = h.start_generation"
        " WHERE h.charge_id = %s"
        " ON CONFLICT (controller_id, outlet_no) DO UPDATE SET high = false,"
        " seen_at = excluded.seen_at",
        (charge_id,),
    )


async def apply(
    conn: psycopg.AsyncConnection[Any], charge_id: str, event: Event
) -> tuple[Charge, tuple[Notice, ...]] | None:
    """Step one charge in the caller's transaction; None if there is no such charge."""
    stepped = await apply_many(conn, {charge_id: [event]})
    return stepped.get(charge_id)


async def apply_many(
    conn: psycopg.AsyncConnection[Any], feed: Mapping[str, Sequence[Event]]
) -> dict[str, tuple[Charge, tuple[Notice, ...]]]:
    """Step each charge in ``feed`` through its events, in order, in the caller's
    transaction; returns each found charge as it ends, with every notice it gave.

    A few statements whatever the number of charges: the rows are locked and read with one
    (in id order, so two callers locking several never wait on each other in a circle),
    every changed row is written with one, every webhook added with one.

    Ingest, with thousands of charges a write, steps them before it locks them instead:
    ``read_unlocked``, ``step_rows``, then ``write_stepped``, which takes only the rows
    still as they were read (their version, ``xmin``, unmoved) and locks, reads and steps
    again only those another transaction changed meanwhile. A charge that nothing changes
    is not written or locked at all. So ingest holds a charge's lock from its write to the
    commit, not while it steps thousands, and a partner's stop waits that much less.
    """
    if not feed:
        return {}
    return await _write(conn, await _lock_and_step(conn, feed, sorted(feed)))


async def read_unlocked(
    conn: psycopg.AsyncConnection[Any], ids: Sequence[str]
) -> list[tuple[Any, ...]]:
    """The rows of charges ``ids`` as they are now, with their versions, without locking
    them: what ``step_rows`` takes. Any connection: ``write_stepped`` checks the versions."""
    cur = await conn.execute(_READ_MANY, (list(ids),))
    return await cur.fetchall()


def step_rows(
    rows: Sequence[tuple[Any, ...]], feed: Mapping[str, Sequence[Event]]
) -> dict[str, Stepped]:
    """Each charge of ``rows`` with events in ``feed``, stepped through them. Pure."""
    return {row[0]: _step(row, feed[row[0]]) for row in rows if row[0] in feed}


async def write_stepped(
    conn: psycopg.AsyncConnection[Any],
    feed: Mapping[str, Sequence[Event]],
    stepped: Mapping[str, Stepped],
) -> dict[str, tuple[Charge, tuple[Notice, ...]]]:
    """Write charges stepped from rows read without a lock (``read_unlocked``,
    ``step_rows``), in the caller's transaction: the rows still at the version read with
    one statement, the others (changed meanwhile) locked, read and stepped through their
    ``feed`` again. Returns every charge as it ends, with its notices, as ``apply_many``."""
    # In id order, as the locked path locks them.
    writes = {
        cid: stepped[cid] for cid in sorted(stepped) if stepped[cid].changed or stepped[cid].notices
    }
    result = {cid: done.outcome for cid, done in stepped.items() if cid not in writes}
    if not writes:
        return result
    written = await _write(conn, writes, unmoved=True)
    moved = [cid for cid in writes if cid not in written]
    if moved:
        written |= await _write(conn, await _lock_and_step(conn, feed, moved))
    return result | written  # a charge deleted meanwhile is in neither


class _Webhook(NamedTuple):
    """A webhook to add: ``_ENQUEUE``'s columns, in order."""

    public_id: str
    client_id: str
    charge_id: str
    kind: str
    body: str


class Stepped(NamedTuple):
    """One charge stepped through its events, from its row at ``version`` (``xmin``)."""

    before: Charge
    after: Charge
    notices: tuple[Notice, ...]
    webhooks: list[_Webhook]
    version: str

    @property
    def changed(self) -> bool:
        return self.after != self.before

    @property
    def outcome(self) -> tuple[Charge, tuple[Notice, ...]]:
        return self.after, self.notices


async def _lock_and_step(
    conn: psycopg.AsyncConnection[Any], feed: Mapping[str, Sequence[Event]], ids: list[str]
) -> dict[str, Stepped]:
    cur = await conn.execute(_READ_MANY + " ORDER BY charge_id FOR UPDATE", (ids,))
    return step_rows(await cur.fetchall(), feed)


async def _write(
    conn: psycopg.AsyncConnection[Any], stepped: Mapping[str, Stepped], *, unmoved: bool = False
) -> dict[str, tuple[Charge, tuple[Notice, ...]]]:
    """Write the stepped charges and their webhooks; with ``unmoved``, only those whose
    row is still the version they were stepped from. Returns the charges written."""
    if unmoved:
        # One statement, so the rows it locks stay locked only until the commit after it.
        values = [(*_values(done.after), done.version) for done in stepped.values()]
        webhooks = [w for cid in sorted(stepped) for w in stepped[cid].webhooks]
        cur = await conn.execute(
            _WRITE_UNMOVED,
            [
                *_columns(values, width=len(values[0])),
                *_columns(webhooks, width=len(_Webhook._fields)),
            ],
        )
        written = {row[0] for row in await cur.fetchall()}
    else:
        changed = [_values(done.after) for done in stepped.values() if done.changed]
        if changed:
            await conn.execute(_UPDATE_MANY, _columns(changed, width=len(changed[0])))
        written = set(stepped)
        webhooks = [w for cid in sorted(written) for w in stepped[cid].webhooks]
        if webhooks:
            await conn.execute(_ENQUEUE_MANY, _columns(webhooks, width=len(_Webhook._fields)))
    return {cid: stepped[cid].outcome for cid in written}


def _columns(rows: Sequence[tuple[Any, ...]], *, width: int) -> list[list[Any]]:
    """Rows as one list per column (the arrays ``unnest`` takes back apart)."""
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * width


#: The charges and each row's version (``xmin`` changes with every write of a row).
_READ_MANY = f"SELECT {_COLUMNS}, xmin::text FROM charges WHERE charge_id = ANY(%s)"


def _step(row: tuple[Any, ...], events: Sequence[Event]) -> Stepped:
    """One charge's row (as ``_READ_MANY`` reads it) stepped through ``events``, with the
    webhooks of its notices."""
    before = _charge(row)
    client_id, outlet_id, end_at, partner_id = row[15], row[16], row[17], row[18]
    expected = row[19]
    after, given = lifecycle.step_all(before, events)
    webhooks: list[_Webhook] = []
    for notice, then in given:
        data = webhook_data(
            then,
            notice,
            partner_charge_id=partner_id,
            outlet_id=outlet_id,
            end_at=end_at,
            expected_start_at=expected,
        )
        check_event(notice.kind, data)
        public_id, body = event_body(notice.kind, data)
        webhooks.append(_Webhook(public_id, client_id, after.charge_id, notice.kind, body))
    return Stepped(before, after, tuple(n for n, _ in given), webhooks, row[-1])


#: Every column the lifecycle changes, then the charge id (see ``_values``).
_SET = (
    "state = %s, stop_generation = %s, started_at = to_timestamp(%s::float8),"
    " rise_at = to_timestamp(%s::float8), stopped_at = to_timestamp(%s::float8),"
    " stop_reason = %s, failure = %s, first_minute = to_timestamp(%s::float8),"
    " first_energy_wh = %s, last_minute = to_timestamp(%s::float8), last_energy_wh = %s,"
    " energy_wh = %s, reported = %s, updated_at = now()"
)

_UPDATE = """
UPDATE charges c SET state = v.state, stop_generation = v.stop_generation,
    started_at = to_timestamp(v.started_at), rise_at = to_timestamp(v.rise_at),
    stopped_at = to_timestamp(v.stopped_at), stop_reason = v.stop_reason,
    failure = v.failure, first_minute = to_timestamp(v.first_minute),
    first_energy_wh = v.first_energy_wh, last_minute = to_timestamp(v.last_minute),
    last_energy_wh = v.last_energy_wh, energy_wh = v.energy_wh, reported = v.reported,
    updated_at = now()
FROM unnest(%b::text[], %b::int8[], %b::float8[], %b::float8[], %b::float8[],
            %b::text[], %b::text[], %b::float8[], %b::float8[], %b::float8[],
            %b::float8[], %b::float8[], %b::bool[], %b::text[]{version_array})
    AS v(state, stop_generation, started_at, rise_at, stopped_at, stop_reason, failure,
         first_minute, first_energy_wh, last_minute, last_energy_wh, energy_wh, reported,
         charge_id{version_column})
WHERE c.charge_id = v.charge_id{version_check}
"""
#: ``_SET`` for many rows: one array per column of ``_values``, in the same order.
_UPDATE_MANY = _UPDATE.format(version_array="", version_column="", version_check="")
#: The same for the rows still at the version given last (one more array), returning those
#: written: the UPDATE locks each row it writes, and a row changed meanwhile no longer
#: matches.
_UPDATE_UNMOVED = (
    _UPDATE.format(
        version_array=", %b::text[]",
        version_column=", version",
        version_check=" AND c.xmin = v.version::xid",
    )
    + "RETURNING c.charge_id"
)

#: Webhooks for many charges, in the order given (their delivery order), each only for a
#: client with a webhook URL (as ``outbox.enqueue``).
_ENQUEUE = """
INSERT INTO webhook_outbox (public_id, client_id, charge_id, kind, body)
SELECT e.public_id, e.client_id, e.charge_id, e.kind, e.body::jsonb
FROM unnest(%b::text[], %b::text[], %b::text[], %b::text[], %b::text[])
    WITH ORDINALITY AS e(public_id, client_id, charge_id, kind, body, n)
WHERE EXISTS (
    SELECT 1 FROM oauth_clients k WHERE k.client_id = e.client_id AND k.webhook_url IS NOT NULL
){only_written}
ORDER BY e.n
"""
_ENQUEUE_MANY = _ENQUEUE.format(only_written="")
#: ``_UPDATE_UNMOVED`` and the webhooks of the charges it wrote, in one statement.
_WRITE_UNMOVED = f"""
WITH written AS ({_UPDATE_UNMOVED}),
notified AS ({_ENQUEUE.format(only_written=" AND e.charge_id IN (SELECT charge_id FROM written)")})
SELECT charge_id FROM written
"""


def _values(charge: Charge) -> tuple[Any, ...]:
    """What ``_SET`` and ``_UPDATE`` write, times as epoch seconds."""
    first, last = charge.first_reading, charge.last_reading
    return (
        charge.state.value,
        charge.stop_generation,
        charge.started_at,
        charge.rise_at,
        charge.stopped_at,
        charge.stop_reason,
        charge.failure,
        first.minute if first else None,
        first.energy_wh if first else None,
        last.minute if last else None,
        last.energy_wh if last else None,
        charge.energy_wh,
        charge.reported,
        charge.charge_id,
    )


#: ``apply_to_new``: the step and its webhooks, written only if the row is still as
#: ``create`` left it (then its state is ``lifecycle.start``'s).
_APPLY_TO_NEW = f"""
WITH changed AS (
    UPDATE charges SET {_SET}
    WHERE charge_id = %s AND state = 'requested' AND first_minute IS NULL
    RETURNING *
), notified AS (
    INSERT INTO webhook_outbox (public_id, client_id, charge_id, kind, body)
    SELECT e.public_id, c.client_id, c.charge_id, e.kind, e.body::jsonb
    FROM changed c
    JOIN oauth_clients k ON k.client_id = c.client_id AND k.webhook_url IS NOT NULL
    CROSS JOIN unnest(%b::text[], %b::text[], %b::text[]) AS e(public_id, kind, body)
)
SELECT {{columns}} FROM changed
"""


@cache
def _apply_to_new_query(columns: tuple[str, ...]) -> bytes:
    """``_APPLY_TO_NEW`` for these columns, composed once: composing it (and psycopg
    parsing its placeholders) on every call cost more CPU than the statement itself."""
    listed = sql.SQL(", ").join(map(sql.Identifier, columns))
    return sql.SQL(_APPLY_TO_NEW).format(columns=listed).as_bytes(None)


async def apply_to_new(
    cur: psycopg.AsyncCursor[Any],
    charge: Charge,
    event: Event,
    *,
    partner_charge_id: str,
    outlet_id: str,
    end_at: dt.datetime,
    columns: Sequence[str] = ("charge_id", "state"),
) -> None:
    """``apply`` for a charge the caller has just created (``charge`` is
    ``lifecycle.start(…)``): one statement, which leaves the stepped row's ``columns`` in
    ``cur``.

    If anything touched the row since its creation (ingest applied the same event first, a
    baseline reading arrived), nothing is written and ``cur`` holds no row: ``apply`` is the
    way to step the charge as it is now.
    """
    after, notices = lifecycle.step(charge, event)
    events = [
        event_body(
            n.kind,
            webhook_data(
                after, n, partner_charge_id=partner_charge_id, outlet_id=outlet_id, end_at=end_at
            ),
        )
        for n in notices
    ]
    await cur.execute(
        _apply_to_new_query(tuple(columns)),
        (
            *_values(after),
            [public_id for public_id, _ in events],
            [n.kind for n in notices],
            [body for _, body in events],
        ),
    )


def webhook_data(
    charge: Charge,
    notice: Notice,
    *,
    partner_charge_id: str,
    outlet_id: str,
    end_at: dt.datetime,
    expected_start_at: float | None = None,
) -> dict[str, Any]:
    """An event's data; it names the charge by the partner's own id. ``expected_start_at``:
    the site allocator's estimate for a waiting charge (``charge.paused``)."""
    data: dict[str, Any] = {
        "charge_id": partner_charge_id,
        "outlet_id": outlet_id,
        "state": charge.state.value,
        "at": notice.at,
        "end_at": end_at.timestamp(),
    }
    if notice.kind == "charge.current_rise":
        data["current"] = notice.detail
    if notice.kind == "charge.stopped":
        data["reason"] = notice.detail
        data["energy_wh"] = round(charge.energy_wh, 3)
        data["meter"] = {
            "first": _reading_dict(charge.first_reading),
            "last": _reading_dict(charge.last_reading),
        }
    if notice.kind == "charge.failed":
        data["reason"] = notice.detail
    if notice.kind == "charge.paused":
        data["reason"] = notice.detail
        data["expected_start_at"] = expected_start_at
    return data


def _reading_dict(reading: Reading | None) -> dict[str, float] | None:
    return None if reading is None else {"minute": reading.minute, "energy_wh": reading.energy_wh}


async def open_charges(
    conn: psycopg.AsyncConnection[Any], controllers: Sequence[str]
) -> dict[tuple[str, int], tuple[list[str], float]]:
    """The outlets of ``controllers`` with charges that still take events:
    (controller, outlet) → (ids, threshold). The partial index ``charges_open`` finds
    them without reading any controller's history."""
    cur = await conn.execute(
        "SELECT c.controller_id, c.outlet_no, array_agg(c.charge_id ORDER BY c.requested_at),"
        " min(o.rise_threshold_a) FROM charges c JOIN outlets o USING (outlet_id)"
        f" WHERE c.controller_id = ANY(%s) AND ({OPEN_SQL})"
        " GROUP BY c.controller_id, c.outlet_no",
        (list(controllers),),
    )
    return {(r[0], r[1]): (list(r[2]), float(r[3])) for r in await cur.fetchall()}

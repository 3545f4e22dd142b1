"""Charges in PostgreSQL: lifecycle steps under a row lock, webhooks written with them."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import psycopg
import pytest
from psycopg import errors

from charging import charges, lifecycle
from charging.lifecycle import Acked, Event, MinuteReading, State, StopRequested
from cloud_gateway.clients import add_client
from kernel.times import utc
from schemas.codec import encode
from schemas.messages import (
    CommandAck,
    CommandOutcome,
    EdgeEvent,
    EdgeEventKind,
    MeterBatch,
    MeterFrame,
    OutletReading,
)
from schemas.topics import Topics
from store.registry import import_registry
from tests.conftest import registry_for
from tests.db import query
from tests.test_store import pending_of, write

pytestmark = pytest.mark.database

T0 = 1_800_000_000.0


@pytest.fixture
def setup(database: str) -> tuple[str, str]:
    import_registry(database, registry_for(["ctl-a"], 2))
    client = add_client(
        database, "WeCharge", ["charges:write"], "http://127.0.0.1:9/hooks", allow_private=True
    )
    return database, client.client_id


async def _create(
    url: str, client_id: str, charge_id: str, generation: int = 1, outlet: int = 1
) -> None:
    """A charge as the gateway creates it: its start command (with ``generation``, which
    the test chooses) and the charge, in one transaction."""
    async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO commands (controller_id, outlet_no, generation, turn_on, charge_id,"
            " end_at, issued_at, issued_by) VALUES ('ctl-a', %s, %s, true, %s, %s, %s, %s)",
            (outlet, generation, charge_id, utc(T0 + 3600), utc(T0), client_id),
        )
        await charges.create(
            conn,
            charge_id=charge_id,
            partner_charge_id=charge_id,
            client_id=client_id,
            outlet_id=f"ctl-a-{outlet}",
            end_at=T0 + 3600,
            request_sha256=b"x" * 32,
        )


async def _apply(url: str, charge_id: str, *events: Event) -> None:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        for event in events:
            async with conn.transaction():
                await charges.apply(conn, charge_id, event)


def outbox(url: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (kind, json.loads(body) if isinstance(body, str) else body)
        for kind, body in query(url, "SELECT kind, body FROM webhook_outbox ORDER BY event_id")
    ]


def test_a_charge_runs_its_course_with_one_webhook_per_step(setup: tuple[str, str]) -> None:
    url, client_id = setup
    on = Acked(1, CommandOutcome.APPLIED, True, T0 + 10)

    async def scenario() -> None:
        await _create(url, client_id, "ch-1")
        await _apply(url, "ch-1", MinuteReading(T0, 1000.0))
        # The gateway's fast path and ingest apply the same ack at the same moment.
        await asyncio.gather(_apply(url, "ch-1", on), _apply(url, "ch-1", on))
        await _apply(
            url,
            "ch-1",
            MinuteReading(T0 + 60, 1200.0),
            StopRequested(2, "partner stopped", T0 + 90),
            Acked(2, CommandOutcome.APPLIED, False, T0 + 91),
            MinuteReading(T0 + 120, 1300.0),
        )

    asyncio.run(scenario())
    events = outbox(url)
    assert [kind for kind, _ in events] == ["charge.started", "charge.stopped"]
    stopped = events[-1][1]["data"]
    assert stopped["energy_wh"] == 300.0 and stopped["reason"] == "partner stopped"
    assert stopped["meter"] == {
        "first": {"minute": T0, "energy_wh": 1000.0},
        "last": {"minute": T0 + 120, "energy_wh": 1300.0},
    }
    assert query(url, "SELECT state, energy_wh, reported FROM charges") == [
        (State.STOPPED.value, 300.0, True)
    ]


async def _apply_to_new(url: str, charge_id: str, event: Event) -> int:
    """The gateway's one-statement path for a charge it has just created; rows written."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cur = conn.cursor()
        await charges.apply_to_new(
            cur,
            lifecycle.start(charge_id, 1),
            event,
            partner_charge_id=charge_id,
            outlet_id="ctl-a-1",
            end_at=utc(T0 + 3600),
        )
        return len(await cur.fetchall())


def test_the_fast_path_writes_a_new_charge_once(setup: tuple[str, str]) -> None:
    url, client_id = setup
    on = Acked(1, CommandOutcome.APPLIED, True, T0 + 10)

    async def scenario() -> list[int]:
        await _create(url, client_id, "ch-1")
        first = await _apply_to_new(url, "ch-1", on)
        again = await _apply_to_new(url, "ch-1", on)  # a retry: the row has moved on
        await _apply(url, "ch-1", on)  # ingest's copy of the same ack
        return [first, again]

    assert asyncio.run(scenario()) == [1, 0]
    assert query(url, "SELECT state, started_at FROM charges") == [(State.ON.value, utc(T0 + 10))]
    events = outbox(url)
    assert [kind for kind, _ in events] == ["charge.started"]
    assert events[0][1]["data"] == {
        "charge_id": "ch-1",
        "outlet_id": "ctl-a-1",
        "state": "on",
        "at": T0 + 10,
        "end_at": T0 + 3600,
    }


def test_the_fast_path_leaves_a_charge_something_else_wrote(setup: tuple[str, str]) -> None:
    url, client_id = setup

    async def scenario() -> int:
        await _create(url, client_id, "ch-1")
        await _apply(url, "ch-1", MinuteReading(T0, 500.0))  # the baseline came first
        return await _apply_to_new(url, "ch-1", Acked(1, CommandOutcome.APPLIED, True, T0 + 10))

    assert asyncio.run(scenario()) == 0
    assert query(url, "SELECT state, first_energy_wh FROM charges") == [
        (State.REQUESTED.value, 500.0)
    ]
    assert outbox(url) == []


def test_an_outlet_runs_one_charge_at_a_time(setup: tuple[str, str]) -> None:
    url, client_id = setup

    async def scenario() -> None:
        await _create(url, client_id, "ch-1")
        with pytest.raises(errors.UniqueViolation):
            await _create(url, client_id, "ch-2", generation=2)
        await _apply(url, "ch-1", Acked(1, CommandOutcome.BREAKER_FAILED, False, T0))
        await _create(url, client_id, "ch-2", generation=2)  # the failed one freed the outlet

    asyncio.run(scenario())
    assert [kind for kind, _ in outbox(url)] == ["charge.failed"]
    assert outbox(url)[0][1]["data"]["reason"] == "breaker command breaker_failed"


def _ack(generation: int, on: bool, at: float, meter: float = 0.0) -> tuple[str, bytes]:
    """An applied command's acknowledgement from ctl-a's outlet 1, as ingest receives it."""
    message = CommandAck(
        controller_id="ctl-a",
        outlet=1,
        generation=generation,
        outcome=CommandOutcome.APPLIED,
        breaker_on=on,
        at=at,
        energy_wh=meter,
    )
    return Topics().ack("ctl-a"), encode(message)


def _crossed(at: float, current_a: float) -> tuple[str, bytes]:
    """ctl-a's outlet 1 reporting its current rose through the threshold."""
    event = EdgeEvent(
        controller_id="ctl-a",
        at=at,
        kind=EdgeEventKind.CURRENT_CROSSED,
        outlet=1,
        generation=1,
        current_a=current_a,
        breaker_on=True,
        detail="rose through 10 A",
        energy_wh=0.0,
        voltage_v=200.0,
    )
    return Topics().event("ctl-a"), encode(event)


def _stop(url: str, charge_id: str, generation: int, at: float) -> None:
    """The partner's stop, as the gateway records it (its OFF has ``generation``)."""

    async def stop() -> None:
        async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
            await charges.apply(conn, charge_id, StopRequested(generation, "partner stopped", at))

    asyncio.run(stop())


def test_ingest_moves_a_charge_from_acks_events_and_readings(setup: tuple[str, str]) -> None:
    """What ingest receives drives the charge: ack → started, current → rise, readings →
    energy; the OFF ack closes the count with the meter it carries. Redelivered messages
    change nothing."""
    url, client_id = setup
    topics = Topics()

    def minute(m: int, energy: float, current: float, on: bool) -> tuple[str, bytes]:
        frame = MeterFrame(
            minute=int(T0) + 60 * m,
            main_energy_wh=5e5,
            outlets=(
                OutletReading(
                    outlet=1, energy_wh=energy, voltage_v=200.0, current_a=current, breaker_on=on
                ),
                OutletReading(
                    outlet=2, energy_wh=10.0, voltage_v=200.0, current_a=0.0, breaker_on=False
                ),
            ),
        )
        return topics.meter("ctl-a"), encode(
            MeterBatch(controller_id="ctl-a", seq=m + 1, frames=(frame,))
        )

    first = [
        minute(0, 1000.0, 0.0, False),
        _ack(1, True, T0 + 10, 1000.0),
        _crossed(T0 + 20, 15.5),
        minute(1, 1150.0, 15.5, True),
    ]

    asyncio.run(_create(url, client_id, "ch-1"))
    write(url, first)
    write(url, first)  # redelivered
    _stop(url, "ch-1", 2, T0 + 100)
    write(url, [_ack(2, False, T0 + 101, 1230.0)])  # stopped is reported at once
    kinds = [kind for kind, _ in outbox(url)]
    assert kinds == ["charge.started", "charge.current_rise", "charge.stopped"]
    stopped = outbox(url)[-1][1]["data"]
    assert stopped["energy_wh"] == 230.0  # from the meter at switch-on to switch-off
    assert stopped["meter"] == {
        "first": {"minute": T0 + 10, "energy_wh": 1000.0},
        "last": {"minute": T0 + 101, "energy_wh": 1230.0},
    }
    write(url, [minute(2, 1230.0, 0.0, False)])  # the next minute changes nothing
    assert len(outbox(url)) == 3
    assert query(url, "SELECT state, rise_at IS NOT NULL FROM charges") == [("stopped", True)]


def test_the_next_charge_on_an_outlet_gets_its_own_rise(setup: tuple[str, str]) -> None:
    """A charge stopped before any minute reading never saw the current fall; the next
    charge on the outlet must still get its own current rise."""
    url, client_id = setup
    asyncio.run(_create(url, client_id, "ch-1"))
    write(url, [_ack(1, True, T0 + 10), _crossed(T0 + 20, 16.0)])
    _stop(url, "ch-1", 2, T0 + 30)
    write(url, [_ack(2, False, T0 + 31)])
    asyncio.run(_create(url, client_id, "ch-2", generation=3))
    write(url, [_ack(3, True, T0 + 40), _crossed(T0 + 50, 16.0)])
    rises = [
        body["data"]["charge_id"] for kind, body in outbox(url) if kind == "charge.current_rise"
    ]
    assert rises == ["ch-1", "ch-2"]


def test_a_client_without_a_webhook_url_gets_no_events_and_wakes_no_deliverer(
    database: str,
) -> None:
    """Such a client asked for no webhooks: its events used to be written anyway, then
    retried and warned about for 72 hours, and every step woke the deliverer."""
    import_registry(database, registry_for(["ctl-a"], 2))
    reader = add_client(database, "Reports", ["charges:write"])  # no webhook URL
    partner = add_client(
        database, "WeCharge", ["charges:write"], "http://127.0.0.1:9/hooks", allow_private=True
    )
    on = Acked(1, CommandOutcome.APPLIED, True, T0 + 10)

    async def wakeups_during(step: Any) -> int:
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as listener:
            await listener.execute("LISTEN chargeline_outbox")
            await step()
            return len([n async for n in listener.notifies(timeout=0.5)])

    async def fast_path(charge_id: str, outlet: int) -> None:  # the gateway's one statement
        async with await psycopg.AsyncConnection.connect(database) as conn:
            await charges.apply_to_new(
                conn.cursor(),
                lifecycle.start(charge_id, 1),
                on,
                partner_charge_id=charge_id,
                outlet_id=f"ctl-a-{outlet}",
                end_at=utc(T0 + 3600),
            )
            await conn.commit()

    async def scenario() -> tuple[int, int, int]:
        await _create(database, reader.client_id, "ch-quiet")
        quiet = await wakeups_during(lambda: fast_path("ch-quiet", 1))
        stop = StopRequested(2, "api", T0 + 20)
        quiet += await wakeups_during(lambda: _apply(database, "ch-quiet", stop))
        await _create(database, partner.client_id, "ch-heard", outlet=2)
        heard = await wakeups_during(lambda: fast_path("ch-heard", 2))
        return quiet, heard, len(outbox(database))

    quiet, heard, events = asyncio.run(scenario())
    assert (quiet, heard) == (0, 1)
    assert [kind for kind, _ in outbox(database)] == ["charge.started"]
    assert events == 1


def test_a_write_stepped_before_locking_meets_a_change_made_meanwhile(
    setup: tuple[str, str],
) -> None:
    """Ingest steps a write's charges before it locks them (``charges.read_unlocked``,
    ``step_rows``, ``write_stepped``). A partner's stop that commits between that read
    and ingest's write is not overwritten: the charge is stepped again from the stopped
    version, so it keeps the stop and counts the reading; a charge nobody touched is
    written from the first step."""
    url, client_id = setup
    on = Acked(1, CommandOutcome.APPLIED, True, T0 + 1, 1000.0)
    asyncio.run(_create(url, client_id, "moved", generation=1, outlet=1))
    asyncio.run(_create(url, client_id, "still", generation=1, outlet=2))
    asyncio.run(_apply(url, "moved", on))
    asyncio.run(_apply(url, "still", on))
    reading = MinuteReading(T0 + 60, 1500.0)

    async def race() -> dict[str, tuple[lifecycle.Charge, tuple[lifecycle.Notice, ...]]]:
        async with (
            await psycopg.AsyncConnection.connect(url) as partner,
            await psycopg.AsyncConnection.connect(url) as ingest,
        ):
            await partner.execute("BEGIN")
            # The partner's stop, not yet committed: ingest reads the charge as it was.
            await charges.apply(partner, "moved", StopRequested(2, "partner stopped", T0 + 30))
            async with ingest.transaction():
                feed: dict[str, list[Event]] = {"moved": [reading], "still": [reading]}
                rows = await charges.read_unlocked(ingest, sorted(feed))
                stepping = asyncio.create_task(
                    charges.write_stepped(ingest, feed, charges.step_rows(rows, feed))
                )
                await asyncio.sleep(0.5)  # ingest's write now waits for the partner's lock
                assert not stepping.done()
                await partner.execute("COMMIT")
                return await stepping

    stepped = asyncio.run(race())
    assert stepped["moved"][0].state is State.STOPPING
    assert stepped["still"][0].state is State.ON
    rows = {
        cid: (state, energy)
        for cid, state, energy in query(url, "SELECT charge_id, state, energy_wh FROM charges")
    }
    assert rows["moved"] == ("stopping", 500.0)  # the stop kept, the reading counted
    assert rows["still"] == ("on", 500.0)


def test_a_write_that_fails_after_its_readings_feeds_the_charges_once_when_retried(
    setup: tuple[str, str],
) -> None:
    """Ingest stores a write's readings in one transaction and what they do to the charges
    in a second. Here the second fails (a partner's stop holds the charge row longer than
    ingest waits): the readings stay stored, the charge and the command ack untouched.
    Retried, the write stores nothing twice (readings, batches, dead letters) and feeds the
    charge once (its energy, its one current rise); redelivered afterwards, it changes
    nothing."""
    from ingest.store import Store
    from ingest.triage import Triage
    from store.registry import RegistrySnapshot

    url, client_id = setup
    asyncio.run(_create(url, client_id, "ch-1"))
    asyncio.run(_apply(url, "ch-1", Acked(1, CommandOutcome.APPLIED, True, T0 + 10, 1000.0)))

    def minute(seq: int, m: int, energy: float) -> tuple[str, bytes]:
        frame = MeterFrame(
            minute=int(T0) + 60 * m,
            main_energy_wh=5e5,
            outlets=(
                OutletReading(
                    outlet=1, energy_wh=energy, voltage_v=200.0, current_a=15.0, breaker_on=True
                ),
                OutletReading(  # not registered: a dead letter, the rest stored
                    outlet=7, energy_wh=1.0, voltage_v=200.0, current_a=0.0, breaker_on=False
                ),
            ),
        )
        batch = MeterBatch(controller_id="ctl-a", seq=seq, frames=(frame,))
        return Topics().meter("ctl-a"), encode(batch)

    messages = [minute(1, 1, 1100.0), minute(2, 2, 1250.0)]

    async def go() -> None:
        store = await Store.connect(url)
        triage = Triage(Topics(), await RegistrySnapshot.load(store.conn))
        pending = pending_of(triage, messages)
        await store.conn.execute("SET lock_timeout = '200ms'")
        holder = await psycopg.AsyncConnection.connect(url)
        async with holder, holder.transaction():
            await holder.execute("SELECT 1 FROM charges WHERE charge_id = 'ch-1' FOR UPDATE")
            with pytest.raises(errors.LockNotAvailable):
                await store.write(pending)
            stored = await (await holder.execute("SELECT count(*) FROM outlet_readings")).fetchone()
            assert stored == (2,)
            charge = await (
                await holder.execute("SELECT energy_wh FROM charges WHERE charge_id = 'ch-1'")
            ).fetchone()
            assert charge == (0.0,)
        await store.write(pending)  # the retry
        await store.write(pending_of(triage, messages))  # a redelivery
        await store.close()

    asyncio.run(go())
    assert query(url, "SELECT count(*) FROM outlet_readings") == [(2,)]
    assert query(url, "SELECT count(*) FROM meter_batches") == [(2,)]
    # One per delivery of a batch naming outlet 7: the retry added none.
    assert query(url, "SELECT count(*) FROM dead_letters") == [(4,)]
    assert query(url, "SELECT state, energy_wh FROM charges") == [("drawing", 250.0)]
    assert [kind for kind, _ in outbox(url)] == ["charge.started", "charge.current_rise"]

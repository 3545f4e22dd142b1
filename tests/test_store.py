"""The store: migrations, the write path, and the analytics views' numbers."""

from __future__ import annotations

import asyncio
import datetime as dt

from ingest import migrations
from ingest.registry import RegistrySnapshot, import_registry
from ingest.store import Store
from ingest.triage import Pending, Triage
from schemas.codec import encode
from schemas.messages import (
    MAX_SEQ,
    EdgeEvent,
    EdgeEventKind,
    MeterBatch,
    MeterFrame,
    OutletReading,
)
from schemas.topics import Topics
from tests.conftest import registry_for
from tests.helpers import query

HOUR = 1_767_225_600  # 2026-01-01 00:00 UTC = 09:00 in Tokyo


def test_migrations_are_recorded_and_rerunnable(database: str) -> None:
    """`db upgrade` twice applies nothing the second time and records the version."""
    assert migrations.upgrade(database) == []
    shipped = migrations.load_migrations("plain")
    assert [m.version for m in shipped] == list(range(1, len(shipped) + 1)), "gaps in versions"
    assert migrations.current_version(database) == len(shipped)
    assert query(database, "SELECT version, name FROM schema_migrations ORDER BY version") == [
        (m.version, m.name) for m in shipped
    ]
    assert query(database, "SELECT DISTINCT flavour FROM schema_migrations") == [("plain",)]


def write(url: str, messages: list[tuple[str, bytes]]) -> Pending:
    async def go() -> Pending:
        store = await Store.connect(url)
        triage = Triage(Topics(), await RegistrySnapshot.load(store.conn))
        pending = Pending()
        for topic, payload in messages:
            triage.accept(pending, topic, payload)
        await store.write(pending)
        await store.close()
        return pending

    return asyncio.run(go())


def batch(seq: int, minutes: range, wh_per_minute: float) -> MeterBatch:
    frames = tuple(
        MeterFrame(
            HOUR + 60 * m,
            1e5 + m * 2 * wh_per_minute,
            tuple(
                OutletReading(n, 1000 + n + m * wh_per_minute, 200.0, 12.0, True) for n in (1, 2)
            ),
        )
        for m in minutes
    )
    return MeterBatch("ctl-a", seq, frames)


def test_redelivered_batches_are_stored_once(database: str) -> None:
    """A batch written twice (and overlapping) leaves each (outlet, minute) once; both are acked."""
    import_registry(database, registry_for(["ctl-a"], 2))
    topic = Topics().meter("ctl-a")
    first = write(database, [(topic, encode(batch(1, range(0, 10), 50)))])
    again = write(
        database,
        [(topic, encode(batch(1, range(0, 10), 50))), (topic, encode(batch(2, range(5, 20), 50)))],
    )
    assert dict(first.acks) == {"ctl-a": [1]} and dict(again.acks) == {"ctl-a": [1, 2]}
    assert query(
        database, "SELECT count(*), count(DISTINCT (outlet_no, minute)) FROM outlet_readings"
    ) == [(40, 40)]
    assert query(database, "SELECT count(*) FROM main_meter_readings") == [(20,)]
    assert query(database, "SELECT seq, frames FROM meter_batches ORDER BY seq") == [
        (1, 10),
        (2, 15),
    ]


def test_energy_views_count_each_watt_hour_once(database: str) -> None:
    """Two hours at 50 Wh/min per outlet: hourly, daily and monthly views agree with the meter."""
    import_registry(database, registry_for(["ctl-a"], 2))
    write(database, [(Topics().meter("ctl-a"), encode(batch(1, range(0, 120), 50)))])
    hourly = query(
        database,
        "SELECT outlet_no, hour, energy_wh FROM energy_outlet_hourly WHERE outlet_no = 1 ORDER BY hour",
    )
    start = dt.datetime.fromtimestamp(HOUR, dt.UTC)
    # first hour: minutes 0..59 → 59 intervals; second hour: minute 59 → 119 = 60 intervals
    assert hourly == [(1, start, 59 * 50.0), (1, start + dt.timedelta(hours=1), 60 * 50.0)]
    daily = query(database, "SELECT day, energy_wh FROM energy_outlet_daily WHERE outlet_no = 1")
    assert daily == [(dt.date(2026, 1, 1), 119 * 50.0)]  # 09:00–11:00 in Tokyo
    monthly = query(
        database, "SELECT month, energy_wh FROM energy_outlet_monthly WHERE outlet_no = 2"
    )
    assert monthly == [(dt.date(2026, 1, 1), 119 * 50.0)]
    site = query(database, "SELECT outlets_wh, main_meter_wh FROM energy_site_daily")
    assert site == [(2 * 119 * 50.0, 119 * 100.0)]


def test_seq_gaps_hold_at_the_limits_of_the_contract(database: str) -> None:
    """Batch numbers 1 and 2^63 - 1 (both allowed by the wire contract) are stored, and
    meter_seq_gaps lists what lies between instead of failing with bigint out of range."""
    import_registry(database, registry_for(["ctl-a"], 2))
    topic = Topics().meter("ctl-a")
    top = MAX_SEQ
    write(
        database,
        [
            (topic, encode(batch(1, range(0, 1), 10))),
            (topic, encode(batch(top - 1, range(1, 2), 10))),
            (topic, encode(batch(top, range(2, 3), 10))),
        ],
    )
    assert query(database, "SELECT * FROM meter_seq_gaps") == [("ctl-a", 2, top - 2, top - 3)]
    write(database, [(topic, encode(batch(2, range(3, 4), 10)))])
    assert query(database, "SELECT missing_from, missing_batches FROM meter_seq_gaps") == [
        (3, top - 4)
    ]


def test_unknown_outlet_readings_are_kept_as_dead_letters(database: str) -> None:
    """Readings of an unregistered outlet go to dead letters; the rest of the batch is stored."""
    import_registry(database, registry_for(["ctl-a"], 1))
    pending = write(database, [(Topics().meter("ctl-a"), encode(batch(1, range(0, 2), 10)))])
    assert query(database, "SELECT count(*) FROM outlet_readings") == [(2,)]
    (reason,) = query(database, "SELECT reason FROM dead_letters")[0]
    assert "outlets [2] are not registered" in reason
    assert dict(pending.acks) == {"ctl-a": [1]}


def test_text_postgresql_cannot_store_becomes_a_dead_letter_not_a_stuck_write(
    database: str,
) -> None:
    """An event whose text holds NUL used to pass the codec and then fail every write."""
    import_registry(database, registry_for(["ctl-a"], 2))
    topics = Topics()
    poison = EdgeEvent(
        "ctl-a", 1.8e9, EdgeEventKind.BREAKER_SWITCHED, 1, 1, 0.0, False, "a\x00", 0.0, 200.0
    )
    good = EdgeEvent(
        "ctl-a", 1.8e9, EdgeEventKind.BREAKER_SWITCHED, 2, 1, 0.0, False, "fine", 0.0, 200.0
    )
    write(
        database,
        [
            (topics.event("ctl-a"), encode(poison)),
            (topics.event("ctl-a"), encode(good)),
            (topics.meter("ctl-a"), encode(batch(1, range(0, 2), 10))),
        ],
    )
    assert query(database, "SELECT outlet_no, detail FROM edge_events") == [(2, "fine")]
    assert query(database, "SELECT count(*) FROM outlet_readings") == [(4,)]
    ((reason, payload),) = query(database, "SELECT reason, payload FROM dead_letters")
    assert "detail: String should match pattern" in reason and bytes(payload) == encode(poison)

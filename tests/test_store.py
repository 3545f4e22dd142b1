"""The store: migrations, the write path, and the analytics views' numbers."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import re
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from ingest.store import Store, late_hours
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
from store import migrations
from store.registry import RegistrySnapshot, import_registry
from tests.conftest import database_url_for, registry_for
from tests.db import query

pytestmark = pytest.mark.database

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
    with psycopg.connect(database) as conn:  # the flavour this server can really use
        flavour = migrations.available_flavour(conn)
    assert query(database, "SELECT DISTINCT flavour FROM schema_migrations") == [(flavour,)]


@pytest.mark.parametrize(
    ("state", "flavour", "warned"),
    [
        (migrations.TimescaleState(False, False, False), "plain", False),
        (migrations.TimescaleState(True, False, False), "plain", True),  # installed only
        (migrations.TimescaleState(True, True, False), "timescale", False),
        (migrations.TimescaleState(True, False, True), "timescale", False),  # created before
    ],
)
def test_the_flavour_is_what_the_server_can_really_use(
    state: migrations.TimescaleState, flavour: str, warned: bool
) -> None:
    """Installed but not preloaded is not usable (the server would close the connection)."""
    chosen, warning = migrations.choose_flavour(state)
    assert chosen == flavour and (warning is not None) == warned
    if warning:
        assert "shared_preload_libraries" in warning


def test_only_flavoured_migrations_bind_the_flavour() -> None:
    """0001 recorded as timescale by a run that failed in 0002 binds nothing."""
    flavoured = migrations.flavoured_versions()
    assert 2 in flavoured and 1 not in flavoured
    assert migrations.bound_flavour([(1, "timescale")], flavoured) is None
    assert migrations.bound_flavour([(1, "plain"), (2, "plain")], flavoured) == "plain"


def test_a_failed_migration_is_not_recorded_and_its_own_error_is_shown(pg_url: str) -> None:
    """A migration that fails leaves no record, raises its own error (not one from
    releasing the lock), and the next upgrade carries on from there."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = database_url_for(pg_url, name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:  # in 0002's way
            conn.execute("CREATE TABLE outlet_energy_hourly_agg (x int)")
        with pytest.raises(psycopg.Error) as failed:
            migrations.upgrade(url)
        assert "outlet_energy_hourly_agg" in str(failed.value)
        assert query(url, "SELECT version FROM schema_migrations") == [(1,)]
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DROP TABLE outlet_energy_hourly_agg")
        assert migrations.upgrade(url)[0].startswith("0002_")
        assert migrations.current_version(url) == len(migrations.load_migrations("plain"))
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pending_of(triage: Triage, messages: list[tuple[str, bytes]]) -> Pending:
    """One write's worth of ``messages``, as ingest's triage collects them."""
    pending = Pending()
    for topic, payload in messages:
        triage.accept(pending, topic, payload)
    return pending


def write(url: str, messages: list[tuple[str, bytes]]) -> Pending:
    async def go() -> Pending:
        store = await Store.connect(url)
        triage = Triage(Topics(), await RegistrySnapshot.load(store.conn))
        pending = pending_of(triage, messages)
        await store.write(pending)
        await store.close()
        return pending

    return asyncio.run(go())


def batch(seq: int, minutes: range, wh_per_minute: float) -> MeterBatch:
    frames = tuple(
        MeterFrame(
            minute=HOUR + 60 * m,
            main_energy_wh=1e5 + m * 2 * wh_per_minute,
            outlets=tuple(
                OutletReading(
                    outlet=n,
                    energy_wh=1000 + n + m * wh_per_minute,
                    voltage_v=200.0,
                    current_a=12.0,
                    breaker_on=True,
                )
                for n in (1, 2)
            ),
        )
        for m in minutes
    )
    return MeterBatch(controller_id="ctl-a", seq=seq, frames=frames)


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


def test_late_hours_are_the_hours_late_batches_wrote_into() -> None:
    """Only batches older than LATE_AFTER_S count; touching hours merge into one range."""
    at = dt.datetime.fromtimestamp(HOUR, dt.UTC)
    rows = [
        ("c", 1, 3, at + dt.timedelta(minutes=58), at + dt.timedelta(minutes=61)),
        ("c", 2, 1, at + dt.timedelta(hours=5), at + dt.timedelta(hours=5)),
        ("c", 3, 1, at + dt.timedelta(days=10), at + dt.timedelta(days=10)),  # recent
    ]
    now = HOUR + 10 * 86400 + 60
    assert late_hours(rows, now=now) == [
        (at, at + dt.timedelta(hours=2)),
        (at + dt.timedelta(hours=5), at + dt.timedelta(hours=6)),
    ]


def test_minutes_ten_days_late_reach_the_energy_views_at_once(database: str) -> None:
    """A controller back from a long outage: its energy shows in the hourly, daily and
    monthly views right after the write, whatever the flavour (TimescaleDB refreshes its
    continuous aggregates for exactly those hours)."""
    import_registry(database, registry_for(["ctl-a"], 2))
    topic = Topics().meter("ctl-a")
    ten_days_ago = (int(time.time()) // 3600 - 240) * 3600
    frames = tuple(
        MeterFrame(
            minute=ten_days_ago + 60 * m,
            main_energy_wh=1e5,
            outlets=tuple(
                OutletReading(
                    outlet=n,
                    energy_wh=1000 + 10.0 * m,
                    voltage_v=200.0,
                    current_a=3.0,
                    breaker_on=True,
                )
                for n in (1, 2)
            ),
        )
        for m in range(0, 61)
    )
    write(database, [(topic, encode(MeterBatch(controller_id="ctl-a", seq=1, frames=frames)))])
    hourly = query(
        database,
        "SELECT sum(energy_wh) FROM energy_outlet_hourly WHERE hour >= to_timestamp(%s)",
        ten_days_ago,
    )
    daily = query(database, "SELECT sum(energy_wh) FROM energy_outlet_daily")
    assert hourly == [(pytest.approx(2 * 600.0),)] and daily == hourly


def test_the_analyst_reads_what_the_docs_promise_but_no_payload_bytes(database: str) -> None:
    """meter_batches and dead_letters (without payload) are readable as chargeline_analyst."""
    import_registry(database, registry_for(["ctl-a"], 2))
    write(database, [(Topics().meter("ctl-a"), b"junk")])
    with psycopg.connect(database) as conn:
        conn.execute("SET ROLE chargeline_analyst")
        conn.execute("SELECT * FROM meter_batches").fetchall()
        ((reason,),) = conn.execute("SELECT reason FROM dead_letters").fetchall()
        assert "MeterBatch payload" in reason
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT payload FROM dead_letters")


def test_the_documented_example_queries_run_as_the_analyst(database: str) -> None:
    """Every statement in docs/analytics.md's examples runs under chargeline_analyst."""
    import_registry(database, registry_for(["ctl-a"], 2))
    doc = (Path(__file__).parent.parent / "docs" / "analytics.md").read_text()
    blocks = re.findall(r"```sql\n(.*?)```", doc, flags=re.S)
    statements = [s.strip() for block in blocks for s in block.split(";") if s.strip()]
    assert len(statements) >= 5
    with psycopg.connect(database) as conn:
        conn.execute("SET ROLE chargeline_analyst")
        for statement in statements:
            conn.execute(statement).fetchall()


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
        controller_id="ctl-a",
        at=1.8e9,
        kind=EdgeEventKind.BREAKER_SWITCHED,
        outlet=1,
        generation=1,
        current_a=0.0,
        breaker_on=False,
        detail="a\x00",
        energy_wh=0.0,
        voltage_v=200.0,
    )
    good = poison._replace(outlet=2, detail="fine")
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


def test_this_run_keeps_its_temporary_files_to_itself(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The run's temporary directory is its own, not under pytest's /tmp/pytest-of-USER,
    which every run of the user re-chmods and prunes."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    assert "pytest-of-" not in str(root), root
    assert root.name.startswith("chargeline-tests-"), root


#: Each outlet's hourly energy straight from the raw minutes, by the rule in
#: docs/analytics.md (what the views computed before the hours were kept in tables).
_HOURS_FROM_MINUTES = """
WITH a AS (
    SELECT controller_id, outlet_no,
           date_bin(INTERVAL '1 hour', minute, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
           (array_agg(energy_wh ORDER BY minute))[1] AS first_wh,
           (array_agg(energy_wh ORDER BY minute DESC))[1] AS last_wh,
           count(*) AS readings, max(current_a) AS max_current_a, avg(voltage_v) AS volts
    FROM outlet_readings GROUP BY 1, 2, 3
), h AS (
    SELECT a.*, lag(last_wh) OVER (PARTITION BY controller_id, outlet_no ORDER BY hour) AS prev
    FROM a
)
SELECT controller_id, outlet_no, hour,
       CASE WHEN prev IS NULL OR last_wh < prev THEN last_wh - first_wh
            ELSE last_wh - prev END,
       readings, max_current_a, round(volts::numeric, 6)
FROM h ORDER BY 1, 2, 3
"""
_HOURS_KEPT = """
SELECT controller_id, outlet_no, hour, energy_wh, readings, max_current_a,
       round(avg_voltage_v::numeric, 6)
FROM energy_outlet_hourly ORDER BY 1, 2, 3
"""
_MAIN_FROM_MINUTES = """
WITH a AS (
    SELECT controller_id,
           date_bin(INTERVAL '1 hour', minute, TIMESTAMPTZ '2000-01-01 00:00:00+00') AS hour,
           (array_agg(energy_wh ORDER BY minute))[1] AS first_wh,
           (array_agg(energy_wh ORDER BY minute DESC))[1] AS last_wh, count(*) AS readings
    FROM main_meter_readings GROUP BY 1, 2
), h AS (
    SELECT a.*, lag(last_wh) OVER (PARTITION BY controller_id ORDER BY hour) AS prev FROM a
)
SELECT controller_id, hour,
       CASE WHEN prev IS NULL OR last_wh < prev THEN last_wh - first_wh
            ELSE last_wh - prev END, readings
FROM h ORDER BY 1, 2
"""


def test_the_hours_kept_are_the_hours_of_the_minutes_whatever_order_they_come_in(
    database: str,
) -> None:
    """The energy views read hours kept as minutes are stored. Minutes arriving in order,
    a day late into a gap, out of order across hours, redelivered, and after a meter
    reset: after each write every outlet's hours (energy, readings, peak current, mean
    voltage) and the main meter's are those computed from the raw minutes."""
    import_registry(database, registry_for(["ctl-a"], 2))
    topic = Topics().meter("ctl-a")

    def frame(m: int, wh: float) -> MeterFrame:
        return MeterFrame(
            minute=HOUR + 60 * m,
            main_energy_wh=1e5 + 2 * wh,
            outlets=tuple(
                OutletReading(
                    outlet=n,
                    energy_wh=wh + n,
                    voltage_v=200.0 + (m % 7),
                    current_a=float(m % 13),
                    breaker_on=True,
                )
                for n in (1, 2)
            ),
        )

    def send(seq: int, minutes: list[int], wh: dict[int, float] | None = None) -> None:
        frames = tuple(frame(m, (wh or {}).get(m, 1000.0 + 50 * m)) for m in minutes)
        write(
            database, [(topic, encode(MeterBatch(controller_id="ctl-a", seq=seq, frames=frames)))]
        )
        outlet_hours = query(database, _HOURS_FROM_MINUTES)
        assert query(database, _HOURS_KEPT) == outlet_hours
        site_hours: dict[dt.datetime, float] = {}
        for _controller, _outlet, hour, energy, *_ in outlet_hours:
            site_hours[hour] = site_hours.get(hour, 0.0) + energy
        kept_site = query(database, "SELECT hour, outlets_wh FROM energy_site_hourly ORDER BY 1")
        assert dict(kept_site) == pytest.approx(site_hours)
        kept = query(
            database,
            "SELECT controller_id, hour, energy_wh, readings FROM main_meter_hourly ORDER BY 1, 2",
        )
        assert kept == query(database, _MAIN_FROM_MINUTES)

    send(1, list(range(0, 30)))  # the first half hour
    send(2, list(range(30, 90)))  # across an hour boundary
    send(3, list(range(300, 330)))  # hours later: a gap before it
    send(4, list(range(150, 200)))  # late, into the gap: the hour after it changes
    send(5, [95, 91, 240, 93, 92])  # out of order, across hours
    send(6, list(range(80, 100)))  # redelivered in part
    send(7, list(range(400, 420)), {m: 3.0 * (m - 399) for m in range(400, 420)})  # reset
    send(8, list(range(60, 61)) + list(range(330, 360)))  # a duplicate and new minutes
    hours = query(database, "SELECT count(*) FROM outlet_hourly")
    assert hours == [(2 * 7,)]  # hours 0 to 6 of both outlets, each kept once


_GAPS_FROM_BATCHES = """
SELECT controller_id, seq + 1, next_seq - 1, next_seq - seq - 1
FROM (SELECT controller_id, seq,
             lead(seq) OVER (PARTITION BY controller_id ORDER BY seq) AS next_seq
      FROM meter_batches) s
WHERE next_seq - seq > 1 ORDER BY 1, 2
"""


def test_the_gaps_kept_are_the_gaps_between_the_batches_stored(database: str) -> None:
    """meter_seq_gaps is kept as batches are stored; after batches arrive in order, far
    ahead, late into a gap (its middle, its ends, filling it), redelivered and several in
    one write, the gaps listed are those between the batches stored, for each controller."""
    import_registry(database, registry_for(["ctl-a", "ctl-b"], 2))

    def send(*batches: tuple[str, int]) -> None:
        messages = []
        for cid, seq in batches:
            frame = MeterFrame(
                minute=HOUR + 60 * seq,
                main_energy_wh=1e5,
                outlets=(OutletReading(1, 1000.0, 200.0, 1.0, True),),
            )
            messages.append(
                (
                    Topics().meter(cid),
                    encode(MeterBatch(controller_id=cid, seq=seq, frames=(frame,))),
                )
            )
        write(database, messages)
        kept = query(database, "SELECT * FROM meter_seq_gaps ORDER BY 1, 2")
        assert kept == query(database, _GAPS_FROM_BATCHES)

    send(("ctl-a", 1), ("ctl-a", 2), ("ctl-b", 1))
    send(("ctl-a", 10), ("ctl-b", 5))  # gaps 3..9 and 2..4
    send(("ctl-a", 6))  # the middle of a gap: 3..5 and 7..9
    send(("ctl-a", 3), ("ctl-a", 9), ("ctl-b", 2), ("ctl-b", 3), ("ctl-b", 4))  # ends; filled
    send(("ctl-a", 6), ("ctl-a", 20))  # redelivered, and a new gap
    send(("ctl-a", 4), ("ctl-a", 5), ("ctl-a", 7), ("ctl-a", 8), ("ctl-a", 15))
    assert query(database, "SELECT * FROM meter_seq_gaps ORDER BY 2") == [
        ("ctl-a", 11, 14, 4),
        ("ctl-a", 16, 19, 4),
    ]

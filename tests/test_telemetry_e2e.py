"""The telemetry path end to end, with real processes: broker, ingest, edge agents, PostgreSQL.

Simulated time runs 120× (a minute every 0.5 s), so 30 minutes take 15 s.
"""

from __future__ import annotations

import time

import pytest

from tests.conftest import Broker, Installation
from tests.db import query
from tests.netcut import NetCut
from tests.procs import Proc, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.slow]
MINUTES = 30


def run_fleet(
    inst: Installation, *, minutes: int = MINUTES, mqtt_url: str | None = None
) -> list[Proc]:
    return [inst.edge(cid, minutes=minutes, mqtt_url=mqtt_url).start() for cid in inst.controllers]


def wait_fleet(edges: list[Proc], timeout: float = 120) -> None:
    """Each edge exits 0 once all its minutes are acknowledged, i.e. committed to the store."""
    for edge in edges:
        assert edge.wait(timeout) == 0, (
            f"{edge.name} exited with {edge.popen.returncode if edge.popen else None}"
        )


def assert_every_minute_once(inst: Installation, minutes: int = MINUTES) -> None:
    rows = query(
        inst.database,
        "SELECT controller_id, count(*), count(DISTINCT minute), count(DISTINCT outlet_no),"
        " extract(epoch FROM max(minute) - min(minute)) / 60"
        " FROM outlet_readings GROUP BY 1 ORDER BY 1",
    )
    assert [r[0] for r in rows] == sorted(inst.controllers)
    for cid, count, distinct_minutes, outlets, span in rows:
        # every outlet of every minute, contiguous, and (by the key) none twice
        assert (count, distinct_minutes, outlets, span) == (minutes * 8, minutes, 8, minutes - 1), (
            cid
        )
    main = query(
        inst.database, "SELECT controller_id, count(*) FROM main_meter_readings GROUP BY 1"
    )
    assert sorted(main) == [(cid, minutes) for cid in sorted(inst.controllers)]
    assert query(inst.database, "SELECT * FROM meter_seq_gaps") == []


def test_three_controllers_thirty_minutes_stored_exactly_once(installation: Installation) -> None:
    """3 controllers × 8 outlets × 30 minutes: every (outlet, minute) is stored exactly once."""
    installation.ingest().start()
    wait_fleet(run_fleet(installation))
    assert_every_minute_once(installation)
    assert query(installation.database, "SELECT count(*) FROM dead_letters") == [(0,)]
    energy = query(installation.database, "SELECT sum(energy_wh) FROM energy_outlet_hourly")[0][0]
    assert energy > 0, "the simulated cars drew no energy"


def test_ingest_killed_and_restarted_mid_run_loses_nothing(installation: Installation) -> None:
    """SIGKILL the ingest worker mid-run and start a new one: nothing lost, nothing doubled."""
    ingest = installation.ingest().start()
    edges = run_fleet(installation)
    wait_for(
        lambda: (
            query(installation.database, "SELECT count(*) FROM outlet_readings")[0][0] >= 5 * 24
        ),
        timeout=60,
        what="some readings before the kill",
    )
    ingest.kill()
    time.sleep(3)  # 6 simulated minutes with no ingest
    installation.ingest().start()
    wait_fleet(edges)
    assert_every_minute_once(installation)


def test_broker_restarted_mid_run_loses_nothing(
    database: str, tmp_path, installation: Installation
) -> None:
    """Restart the broker (SIGTERM, then SIGKILL) mid-run: the fleet and ingest reconnect, nothing lost."""
    own = Broker(tmp_path / "own-broker").start()
    installation.mqtt_url = own.url
    installation.ingest().start()
    edges = run_fleet(installation)
    for stop in (own.proc.stop, own.proc.kill):
        time.sleep(4)
        stop()
        time.sleep(1.5)
        own.start()
    wait_fleet(edges)
    assert_every_minute_once(installation)


def test_edge_offline_ten_minutes_delivers_its_backlog(
    installation: Installation, broker: Broker
) -> None:
    """An edge cut off for 10 simulated minutes sends every buffered minute when it is back,
    several minutes per message."""
    installation.ingest().start()
    link = NetCut(broker.port)
    try:
        cut_off = installation.controllers[0]
        edges = [
            installation.edge(
                cid,
                minutes=MINUTES,
                mqtt_url=f"mqtt://127.0.0.1:{link.port}" if cid == cut_off else None,
            ).start()
            for cid in installation.controllers
        ]
        wait_for(
            lambda: (
                query(
                    installation.database,
                    "SELECT count(*) FROM meter_batches WHERE controller_id = %s",
                    cut_off,
                )[0][0]
                >= 3
            ),
            timeout=60,
            what="the edge to deliver before the cut",
        )
        link.cut()
        time.sleep(5)  # 10 simulated minutes
        link.restore()
        wait_fleet(edges)
    finally:
        link.close()
    assert_every_minute_once(installation)
    (largest,) = query(
        installation.database,
        "SELECT max(frames) FROM meter_batches WHERE controller_id = %s",
        cut_off,
    )[0]
    assert largest >= 5, f"backlog was not batched: largest batch had {largest} frames"

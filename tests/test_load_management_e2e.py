"""Site load management end to end, nothing mocked: the edge agent (simulated cars), the
broker, ingest, the gateway, the webhook receiver, ``chargeline loads`` (the sites'
allocator) and, for a station, ``chargeline ocpp`` with the ``ocpp`` package's charge point
side. Each test has a broker of its own, so that one may be killed.

The allocator runs every real second here (60 s of the installation's accelerated clock):
a charge's turn (900 s) is 15 real seconds, the minimum on time 5, the minimum off time 2."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest
from authlib.integrations.httpx_client import OAuth2Client

from cloud_gateway.clients import add_client
from store import roles
from store.registry import import_registry
from tests.conftest import Broker, Installation, registry_for
from tests.db import query
from tests.ops import scrape
from tests.partners import Partner, chargeline, problem
from tests.procs import Proc, free_port, wait_for
from tests.stations import Stations

pytestmark = pytest.mark.processes

PERIOD_S = 1.0  # real seconds between two allocations
CARS = "1:60000:16,2:60000:16,3:60000:16"


@pytest.fixture
def own_broker(tmp_path: Path) -> Broker:
    return Broker(tmp_path / "broker").start()


@pytest.fixture
def installation(database: str, own_broker: Broker, tmp_path: Path) -> Installation:
    """The usual three controllers of eight outlets, on a broker of the test's own."""
    tag = uuid.uuid4().hex[:6]
    controllers = [f"c{tag}-{i}" for i in range(1, 4)]
    import_registry(database, registry_for(controllers, 8))
    return Installation(
        database=database, mqtt_url=own_broker.url, tmp=tmp_path, controllers=controllers
    )


def execute(url: str, sql: str, *params: Any) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(sql, params or None)  # type: ignore[arg-type]


def start_loads(inst: Installation, ops: str | None = None) -> Proc:
    """``chargeline loads`` with its own database login (the grants of migration 0030)."""
    login = roles.create_login(inst.database, f"t{uuid.uuid4().hex[:8]}_loads", "loads")
    return Proc(
        f"loads-{uuid.uuid4().hex[:4]}",
        ["loads"],
        inst.env(
            database_url=login,
            period_s=PERIOD_S,
            sites_refresh_s=1,
            report_stale_s=4,
            ops_bind=ops or f"127.0.0.1:{free_port()}",
        ),
        inst.tmp,
    ).start()


def leading(inst: Installation, site_id: str) -> None:
    """Wait until the allocator has run three periods at the site: its budgets are out (a
    controller that never heard one has no limit of the site's)."""
    wait_for(
        lambda: (
            query(inst.database, "SELECT count(*) FROM site_load WHERE site_id = %s", site_id)[0][0]
            >= 3
        ),
        timeout=30,
        what=f"the allocator leading {site_id}",
    )


def kinds(partner: Partner, charge_id: str) -> list[str]:
    return [w["type"] for w in partner.webhooks(charge_id)]


def first(partner: Partner, charge_id: str, kind: str) -> dict[str, Any] | None:
    return next((w["data"] for w in partner.webhooks(charge_id) if w["type"] == kind), None)


def the_site_kept_under_its_cap(inst: Installation, site_id: str) -> int:
    """Every period the allocator measured: the outlets' current (the building is 0 A here)
    at or under the cap in force, but for the one period after a cap is lowered (measured
    before the edges shed, within a second of it). The number of periods checked."""
    rows = query(
        inst.database,
        "SELECT cap_a, outlets_a, lag(cap_a) OVER (ORDER BY at) FROM site_load"
        " WHERE site_id = %s ORDER BY at",
        site_id,
    )
    over = [(cap, amps) for cap, amps, before in rows if amps > cap + 0.5 and before == cap]
    assert not over, f"above the cap: {over[:5]}"
    return len(rows)


@pytest.mark.edge(sim_cars=CARS, load_report_s=1)
def test_charges_beyond_the_cap_wait_their_turn_and_rotate(
    partner: Partner, installation: Installation
) -> None:
    inst = installation
    cid = inst.controllers[0]
    # The controllers with no agent running here may draw nothing when unheard.
    execute(inst.database, "UPDATE controllers SET safe_share_a = 0 WHERE controller_id <> %s", cid)
    # Room for two 16 A cars: 40 A less the allocator's 4 A headroom.
    set_cap = chargeline(
        inst, "site", "cap", "set", "test-site", "40", "--reason", "maintenance", "--by", "ops-1"
    )
    assert set_cap.returncode == 0, set_cap.stderr
    assert "cap 40 A" in set_cap.stdout and "set by ops-1" in set_cap.stdout
    start_loads(inst)
    leading(inst, "test-site")
    for n in (1, 2):
        started = partner.post("/v1/charges", {"outlet_id": f"{cid}-{n}", "charge_id": f"lm-{n}"})
        assert started.status_code in (201, 202), started.text
        wait_for(
            lambda n=n: "charge.started" in kinds(partner, f"lm-{n}"),
            timeout=20,
            what=f"lm-{n} started",
        )
    third = partner.post("/v1/charges", {"outlet_id": f"{cid}-3", "charge_id": "lm-3"})
    assert third.status_code == 202 and third.json()["state"] == "queued", third.text
    queued = wait_for(
        lambda: first(partner, "lm-3", "charge.paused"), timeout=10, what="lm-3's charge.paused"
    )
    assert queued["state"] == "queued" and queued["reason"] == "waiting for capacity"
    estimated = wait_for(
        lambda: partner.get("/v1/charges/lm-3").json()["expected_start_at"],
        timeout=10,
        what="an estimated start for the queued charge",
    )
    assert estimated is not None
    # Its turn comes when one of the first two has had its turn (900 s: 15 real seconds):
    # that one is paused, and later resumed.
    wait_for(lambda: "charge.started" in kinds(partner, "lm-3"), timeout=60, what="lm-3 started")
    rotated = wait_for(
        lambda: [c for c in ("lm-1", "lm-2") if first(partner, c, "charge.paused")],
        timeout=30,
        what="one of the first two paused for lm-3",
    )
    paused = first(partner, rotated[0], "charge.paused")
    assert paused is not None and paused["state"] == "paused"
    assert paused["reason"] == "site capacity"
    wait_for(
        lambda: "charge.resumed" in kinds(partner, rotated[0]),
        timeout=60,
        what=f"{rotated[0]} resumed in its turn",
    )
    # The partner and the operator see the same cap, and who set it.
    cap = partner.get("/v1/sites/test-site/caps").json()
    assert cap["cap_a"] == 40 and cap["source"] == "maintenance"
    assert [w["set_by"] for w in cap["windows"]] == ["ops-1"]
    assert cap["load"]["waiting"] >= 0
    shown = chargeline(inst, "site", "cap", "show", "test-site")
    assert shown.returncode == 0 and "cap 40 A now (maintenance)" in shown.stdout
    # Never more than the cap: every period measured, and no more than two breakers closed
    # at any minute the edge stored.
    assert the_site_kept_under_its_cap(inst, "test-site") >= 10
    minutes = query(
        inst.database,
        "SELECT minute, count(*) FILTER (WHERE breaker_on) FROM outlet_readings"
        " WHERE controller_id = %s GROUP BY minute",
        cid,
    )
    assert minutes and max(on for _m, on in minutes) <= 2


@pytest.mark.edge(sim_cars=CARS, load_report_s=1)
def test_a_lowered_cap_pauses_charges_and_removing_it_resumes_them(
    partner: Partner, installation: Installation
) -> None:
    inst = installation
    cid = inst.controllers[0]
    execute(inst.database, "UPDATE controllers SET safe_share_a = 0 WHERE controller_id <> %s", cid)
    operator = add_client(inst.database, "Site operator", ["sites:read", "sites:write"])
    with OAuth2Client(operator.client_id, operator.client_secret) as oauth:
        oauth.fetch_token(partner.token_url, grant_type="client_credentials")
        # The partner's client may read a cap, not set one.
        refused = partner.post("/v1/sites/test-site/caps", {"cap_a": 20})
        assert problem(refused) == (403, "insufficient-scope")
        start_loads(inst)
        leading(inst, "test-site")
        for n in (1, 2, 3):
            partner.post("/v1/charges", {"outlet_id": f"{cid}-{n}", "charge_id": f"dr-{n}"})
        for n in (1, 2, 3):  # 90 A by default: all three charge
            wait_for(
                lambda n=n: "charge.started" in kinds(partner, f"dr-{n}"),
                timeout=20,
                what=f"dr-{n} started",
            )
        # A demand-response event: 24 A, room for one car.
        api = partner.api
        bad = oauth.post(f"{api}/v1/sites/test-site/caps", json={"cap_a": 5000})
        assert problem(bad) == (422, "invalid-request") and "contract" in bad.json()["detail"]
        assert problem(oauth.post(f"{api}/v1/sites/nowhere/caps", json={"cap_a": 1})) == (
            404,
            "unknown-site",
        )
        lowered = oauth.post(
            f"{api}/v1/sites/test-site/caps", json={"cap_a": 24, "reason": "demand_response"}
        )
        assert lowered.status_code == 201, lowered.text
        window = lowered.json()
        assert window["set_by"] == f"client:{operator.client_id}"
        paused = wait_for(
            lambda: [n for n in (1, 2, 3) if first(partner, f"dr-{n}", "charge.paused")],
            timeout=30,
            what="two charges paused by the lowered cap",
            every=0.5,
        )
        wait_for(
            lambda: len([n for n in (1, 2, 3) if first(partner, f"dr-{n}", "charge.paused")]) == 2,
            timeout=30,
            what="two of three paused",
        )
        assert len(paused) >= 1
        for n in (1, 2, 3):
            state = partner.get(f"/v1/charges/dr-{n}").json()["state"]
            assert state in ("on", "drawing", "paused")
        removed = oauth.delete(f"{api}/v1/sites/test-site/caps/{window['id']}")
        assert removed.status_code == 200 and removed.json()["windows"] == []
        assert problem(oauth.delete(f"{api}/v1/sites/test-site/caps/{window['id']}")) == (
            404,
            "unknown-cap-window",
        )
    wait_for(
        lambda: all(
            "charge.resumed" in kinds(partner, f"dr-{n}")
            for n in (1, 2, 3)
            if first(partner, f"dr-{n}", "charge.paused")
        ),
        timeout=30,
        what="the paused charges resumed once the window was removed",
    )
    actions = query(
        inst.database,
        "SELECT operator, action FROM operator_actions WHERE target = 'test-site' ORDER BY id",
    )
    who = f"client:{operator.client_id}"
    assert actions == [(who, "site cap set"), (who, "site cap removed")]
    assert the_site_kept_under_its_cap(inst, "test-site") >= 5


def test_a_station_is_turned_down_not_switched_off(partner: Partner, stations: Stations) -> None:
    inst = stations.installation
    site = query(
        inst.database,
        "SELECT site_id FROM controllers WHERE controller_id = %s",
        stations.cids["2.0.1"],
    )[0][0]
    execute(
        inst.database,
        "UPDATE controllers SET safe_share_a = 0 WHERE controller_id = %s",
        stations.cids["1.6"],
    )
    station = stations.start(stations.station("2.0.1"))  # its car draws 180 A
    stations.online("2.0.1")
    set_cap = chargeline(inst, "site", "cap", "set", site, "100", "--reason", "demand_response")
    assert set_cap.returncode == 0, set_cap.stderr
    start_loads(inst)
    leading(inst, site)
    started = partner.post(
        "/v1/charges", {"outlet_id": stations.outlets["2.0.1"], "charge_id": "dc-lm"}
    )
    assert started.status_code in (201, 202), started.text
    wait_for(lambda: "charge.started" in kinds(partner, "dc-lm"), timeout=30, what="started")
    # 100 A less the 4 A headroom: a charging profile of 96 A, not 0 A, and the car draws it.
    wait_for(
        lambda: station.limit_a is not None and station.limit_a <= 96.0,
        timeout=30,
        what="the station turned down",
    )
    assert 90.0 <= station.limit_a <= 96.0
    time.sleep(3)  # three (simulated) minutes of meter values
    rows = wait_for(
        lambda: query(
            inst.database,
            "SELECT current_a FROM outlet_readings WHERE controller_id = %s AND current_a > 0"
            " ORDER BY minute DESC LIMIT 1",
            stations.cids["2.0.1"],
        ),
        timeout=20,
        what="the station's minutes while turned down",
    )
    assert 0 < rows[0][0] <= 96.0
    assert "charge.paused" not in kinds(partner, "dc-lm")
    assert partner.get("/v1/charges/dc-lm").json()["state"] in ("on", "drawing")
    assert the_site_kept_under_its_cap(inst, site) >= 3


@pytest.mark.edge(sim_cars=CARS, load_report_s=1)
def test_with_the_broker_killed_the_controller_keeps_to_its_safe_share(
    partner: Partner, installation: Installation, own_broker: Broker
) -> None:
    inst = installation
    cid = inst.controllers[0]
    execute(inst.database, "UPDATE controllers SET safe_share_a = 0 WHERE controller_id <> %s", cid)
    # Its safe share (the registry's): one 16 A car.
    execute(inst.database, "UPDATE controllers SET safe_share_a = 16 WHERE controller_id = %s", cid)
    start_loads(inst)
    leading(inst, "test-site")
    for n in (1, 2):
        partner.post("/v1/charges", {"outlet_id": f"{cid}-{n}", "charge_id": f"bo-{n}"})
        wait_for(
            lambda n=n: "charge.started" in kinds(partner, f"bo-{n}"),
            timeout=20,
            what=f"bo-{n} started",
        )
    time.sleep(3 * PERIOD_S)
    own_broker.proc.kill()  # mid-peak, no goodbye
    killed_at = inst.now()
    time.sleep(2 * PERIOD_S)  # the allocator's last period before it noticed
    last_budget = query(
        inst.database,
        "SELECT extract(epoch FROM max(at))::float8 FROM site_load WHERE site_id = %s"
        " AND at <= to_timestamp(%s)",
        "test-site",
        killed_at,
    )[0][0]
    time.sleep(4)  # the edge is on its own
    back_at = inst.now()
    own_broker.proc.start()
    period = PERIOD_S * inst.time_scale  # one period in the installation's seconds
    # Budgets expire two periods after they are issued (one period more for a busy
    # machine): from then until the broker came back, the minutes the edge kept (and sent
    # once it could) show one breaker closed and the controller within its safe share.
    outage = wait_for(
        lambda: query(
            inst.database,
            "SELECT minute, count(*) FILTER (WHERE breaker_on), sum(current_a)"
            " FROM outlet_readings WHERE controller_id = %s"
            " AND minute >= to_timestamp(%s) AND minute < to_timestamp(%s) GROUP BY minute",
            cid,
            last_budget + 3 * period,
            back_at,
        ),
        timeout=60,
        what="the outage's minutes, sent once the broker was back",
    )
    assert all(on == 1 and amps <= 16.5 for _m, on, amps in outage), outage
    before = query(
        inst.database,
        "SELECT count(*) FILTER (WHERE breaker_on) FROM outlet_readings WHERE controller_id = %s"
        " AND minute < to_timestamp(%s) GROUP BY minute ORDER BY minute DESC LIMIT 1",
        cid,
        killed_at,
    )
    assert before == [(2,)], "both charged while the cloud was there"
    # And the cloud takes over again: both charge once more.
    wait_for(
        lambda: query(
            inst.database,
            "SELECT 1 FROM outlet_readings WHERE controller_id = %s AND minute > to_timestamp(%s)"
            " GROUP BY minute HAVING count(*) FILTER (WHERE breaker_on) = 2",
            cid,
            back_at,
        ),
        timeout=60,
        what="both charging again with the cloud back",
    )


def test_one_allocator_leads_a_site_and_a_standby_takes_over(
    partner: Partner, installation: Installation
) -> None:
    inst = installation
    ops = [f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]
    first = start_loads(inst, ops[0])
    leading(inst, "test-site")
    standby = start_loads(inst, ops[1])

    def led() -> list[float]:
        found = []
        for url in ops:
            try:
                found.append(scrape(f"http://{url}")["chargeline_sites_led"][()])
            except (httpx2.TransportError, AssertionError, KeyError):
                found.append(-1)
        return found

    wait_for(lambda: led()[1] == 0.0, timeout=30, what="the standby up, leading nothing")
    assert led() == [1.0, 0.0]
    first.kill()  # the leader dies: its lock goes with its connection
    before = query(inst.database, "SELECT count(*) FROM site_load WHERE site_id = 'test-site'")
    wait_for(lambda: led()[1] == 1.0, timeout=30, what="the standby leading the site")
    wait_for(
        lambda: (
            query(inst.database, "SELECT count(*) FROM site_load WHERE site_id = 'test-site'")
            > before
        ),
        timeout=30,
        what="the standby allocating",
    )
    assert standby.running()

"""What the partner hears when the field does not answer: breakers that never answer or do not
move, controllers offline, stopped, hung or silent, and charges ended by the edge's own timer."""

from __future__ import annotations

import time

import pytest

from tests.conftest import Installation
from tests.db import query
from tests.partners import (
    Partner,
    commands,
    looks_online,
    offline_and_refusing,
    publish_presence,
    start_unanswered,
)
from tests.procs import wait_for

pytestmark = pytest.mark.processes


def test_a_start_the_breaker_never_answers_fails_and_is_cancelled(
    partner: Partner, installation: Installation
) -> None:
    """The controller looks online but its agent is gone: 202, then charge.failed and an OFF."""
    silent = start_unanswered(partner, installation, "wc-9")
    wait_for(
        lambda: [w["type"] for w in partner.webhooks("wc-9")] == ["charge.failed"],
        timeout=20,
        what="charge.failed after the start time-out",
    )
    assert partner.webhooks("wc-9")[0]["data"]["reason"] == "start timed out"
    assert commands(installation, silent) == [
        (1, True, partner.client.client_id),
        (2, False, "chargeline"),
    ], "cancelled by an OFF"
    assert partner.get("/v1/charges/wc-9").json()["state"] == "failed"


def test_a_status_request_the_edge_never_answers_is_answered_from_the_store(
    partner: Partner, installation: Installation
) -> None:
    """The controller looks online but its agent is gone: the last reading answers."""
    silent = installation.controllers[1]
    looks_online(installation, silent)
    answer = partner.status(f"{silent}-2", within=15)  # after the 3 s time-out
    assert answer["source"] == "last_reading"
    assert answer["reading"] is None, "this outlet has never sent a reading"


def test_the_partner_hears_when_a_controller_goes_offline_and_comes_back(
    partner: Partner, installation: Installation
) -> None:
    cid = installation.controllers[0]
    partner.edge.kill()  # SIGKILL: the broker sends the agent's will, which says why
    offline = offline_and_refusing(
        partner, cid, reason="connection lost", within=20, charge_id="wc-11"
    )
    assert offline["online"] is False
    assert offline["outlet_ids"] == [f"{cid}-{n}" for n in range(1, 9)]

    partner.edge.start()

    def presence() -> list[str]:
        return [e["type"] for e in partner.events(lambda b: b["type"].startswith("controller."))]

    wait_for(
        lambda: presence()[-1:] == ["controller.online"] and len(presence()) > 2,
        timeout=20,
        what="controller.online again",
    )
    time.sleep(1)  # nothing more follows: a retained presence re-read is not a change
    assert presence() == ["controller.online", "controller.offline", "controller.online"]


def test_a_controller_stopped_cleanly_is_offline_at_once(
    partner: Partner, installation: Installation
) -> None:
    """SIGTERM: the edge says it is stopping before it disconnects (a clean disconnect
    discards its will), so the partner hears it within 5 s, not after the 150 s heartbeat,
    and a start is refused with 503 at once."""
    cid = installation.controllers[0]
    assert partner.edge.stop() == 0
    offline_and_refusing(partner, cid, reason="stopped", within=5, charge_id="wc-19")


@pytest.mark.gateway(start_timeout_s=60)
def test_a_start_fails_when_its_controller_goes_offline(
    partner: Partner, installation: Installation
) -> None:
    silent = start_unanswered(partner, installation, "wc-12")
    publish_presence(installation, silent, online=False)  # what its will would say
    failed = wait_for(
        lambda: partner.event("charge.failed", charge_id="wc-12"),
        timeout=15,
        what="charge.failed",
    )
    assert failed["data"]["reason"] == "controller offline"
    assert commands(installation, silent) == [
        (1, True, partner.client.client_id),
        (2, False, "chargeline"),
    ], "cancelled by an OFF"


@pytest.mark.gateway(max_charge_s=1800)  # the default end, shortened: 30 s of real time
def test_a_charge_without_an_end_time_is_stopped_by_the_edge_at_the_default_end(
    partner: Partner, installation: Installation
) -> None:
    """No end time given: the charge ends at issue + max_charge_s (24 h unless configured,
    see test_scan_start_rise_stop_with_webhooks), by the edge's own timer, never before it."""
    outlet = f"{installation.controllers[0]}-5"
    started = partner.post("/v1/charges", {"outlet_id": outlet, "charge_id": "wc-13"})
    assert started.status_code == 201, started.text
    stopped = wait_for(
        lambda: partner.event("charge.stopped", charge_id="wc-13"),
        timeout=120,
        what="charge.stopped at the default end time",
    )["data"]
    assert stopped["reason"] == "end_at reached"
    ((issued_at, end_at, switched_off),) = query(
        installation.database,
        "SELECT c.issued_at, c.end_at, (SELECT at FROM edge_events WHERE controller_id = %s"
        "  AND outlet_no = 5 AND detail = 'end_at reached')"
        " FROM commands c WHERE c.controller_id = %s AND c.outlet_no = 5 AND c.end_at IS NOT NULL"
        " ORDER BY c.issued_at LIMIT 1",
        installation.controllers[0],
        installation.controllers[0],
    )
    assert (end_at - issued_at).total_seconds() == 1800, "no end time given: max_charge_s"
    # The edge stamps the switch with its estimate of the cloud clock, which never runs
    # ahead of the cloud, and checks its timer at every sample (each simulated second):
    # never before end_at; the upper bound leaves a busy machine 5 s of real time.
    late_s = (switched_off - end_at).total_seconds()
    assert 0 <= late_s <= 300, f"stopped {late_s:.0f} s after the end time"
    # A 16 A car for the whole half hour (not one cut short).
    assert stopped["energy_wh"] >= 1200, stopped


@pytest.mark.edge(sim_failed_breakers="7")
def test_a_breaker_that_does_not_move_fails_the_charge(
    partner: Partner, installation: Installation
) -> None:
    outlet = f"{installation.controllers[0]}-7"
    answer = partner.post("/v1/charges", {"outlet_id": outlet, "charge_id": "wc-16"})
    assert answer.status_code == 201, answer.text
    assert answer.json()["state"] == "failed"
    failed = wait_for(
        lambda: partner.event("charge.failed", charge_id="wc-16"),
        timeout=10,
        what="charge.failed",
    )["data"]
    assert "breaker_failed" in failed["reason"]
    assert [w["type"] for w in partner.webhooks("wc-16")] == ["charge.failed"]
    # The outlet is free again for the next resident (its breaker is reported, not assumed).
    status = partner.get(f"/v1/outlets/{outlet}/status").json()
    assert status["active_charge_id"] is None


@pytest.mark.ingest(silence_timeout_s=3)
def test_a_hung_controller_is_taken_offline_and_comes_back_when_heard_again(
    partner: Partner, installation: Installation
) -> None:
    """The embedded broker does not enforce keepalive: a hung edge keeps its connection
    and its will is never sent. Ingest's heartbeat notices the silence."""
    cid = installation.controllers[0]
    partner.edge.pause()
    try:
        offline_and_refusing(partner, cid, reason="silent for 3 s", within=20, charge_id="wc-17")
    finally:
        partner.edge.resume()
    back = wait_for(
        lambda: partner.event("controller.online", controller_id=cid, reason="heard again"),
        timeout=20,
        what="controller.online once it speaks again",
    )
    assert back["data"]["outlet_ids"][0] == f"{cid}-1"
    started = partner.post("/v1/charges", {"outlet_id": f"{cid}-1", "charge_id": "wc-18"})
    assert started.status_code == 201, started.text

"""Every long-running process answers its operator's monitoring (issue 18): ``/healthz``,
``/readyz`` naming what is not ready, and ``/metrics`` in Prometheus's text format, read
here with the Prometheus project's own parser."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx2
import pytest

from kernel import mqtt
from kernel.settings import MqttUrl
from schemas.codec import encode
from schemas.messages import MeterBatch, MeterFrame, OutletReading
from schemas.topics import Topics
from tests.conftest import Broker, Installation
from tests.ops import lint, ready, scrape
from tests.partners import Partner
from tests.procs import Proc, free_port, wait_for
from tests.test_deploy_monitoring import named_metrics

pytestmark = pytest.mark.processes


def status_of(url: str) -> int | None:
    """The answer's status, or None while nothing listens yet."""
    try:
        return httpx2.get(url, timeout=10).status_code
    except httpx2.TransportError:
        return None


def start_loads(inst: Installation) -> str:
    """``chargeline loads`` on the installation; its ops listener's URL."""
    ops = f"127.0.0.1:{free_port()}"
    Proc("loads", ["loads"], inst.env(period_s=1, ops_bind=ops), inst.tmp).start()
    return f"http://{ops}"


def publish(url: str, messages: list[tuple[str, bytes]]) -> None:
    async def go() -> None:
        async with mqtt.client(MqttUrl(url), identifier=f"ops-{time.monotonic_ns()}") as client:
            for topic, payload in messages:
                await client.publish(topic, payload, qos=1)

    asyncio.run(go())


def test_ingest_is_ready_and_counts_what_it_stores_and_refuses(
    installation: Installation,
) -> None:
    ops = f"127.0.0.1:{free_port()}"
    url = f"http://{ops}"
    proc = installation.ingest(ops_bind=ops, fleet_refresh_s=0.5).start()
    try:
        wait_for(lambda: status_of(f"{url}/readyz") == 200, timeout=30, what="ingest ready")
        assert ready(url).json()["checks"] == {"mqtt": True, "database": True}
        assert httpx2.get(f"{url}/healthz").json()["status"] == "alive"
        before = scrape(url)
        assert before["chargeline_mqtt_connected"][()] == 1
        assert before["chargeline_ingest_readings_stored_total"][()] == 0

        cid = installation.controllers[0]
        topics = Topics(installation.topic_root)
        minute = (int(time.time()) // 60 - 5) * 60
        frame = MeterFrame(
            minute=minute,
            main_energy_wh=1000.0,
            outlets=tuple(OutletReading(n, 100.0 + n, 230.0, 0.0, False) for n in (1, 2, 3)),
        )
        good = encode(MeterBatch(controller_id=cid, seq=1, frames=(frame,)))
        later = frame._replace(minute=minute + 120)
        after_gap = encode(MeterBatch(controller_id=cid, seq=3, frames=(later,)))
        publish(
            installation.mqtt_url,
            [
                (topics.meter(cid), good),
                (topics.meter(cid), b"\xc1"),
                (topics.meter(cid), after_gap),
            ],
        )

        def counted() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
            now = scrape(url)
            done = now["chargeline_ingest_messages_received_total"][()] >= 3
            return now if done and now["chargeline_meter_batches_missing"][()] == 1 else None

        after = wait_for(counted, timeout=30, what="both messages counted")
        assert after["chargeline_ingest_readings_stored_total"][()] == 6
        assert after["chargeline_ingest_batches_stored_total"][()] == 2
        controllers = after["chargeline_controllers"]
        assert controllers[(("state", "online"),)] + controllers[(("state", "offline"),)] == 3
        dead = after["chargeline_ingest_dead_letters_total"]
        assert dead[(("reason", "undecodable"),)] == 1
        assert sum(dead.values()) == 1  # every kind is exported, the others at 0
        assert len(dead) >= 7
        writes = after["chargeline_ingest_database_write_seconds_count"][()]
        assert writes >= 1 and after["chargeline_ingest_database_writes_total"][()] == writes
        assert after["chargeline_ingest_lag_seconds"][()] >= 0
        lint(url)
    finally:
        proc.stop()


def test_ingest_without_its_broker_is_alive_but_not_ready(installation: Installation) -> None:
    ops = f"127.0.0.1:{free_port()}"
    url = f"http://{ops}"
    nowhere = f"mqtt://127.0.0.1:{free_port()}"
    proc = installation.ingest(ops_bind=ops, mqtt_url=nowhere).start()
    try:
        wait_for(lambda: status_of(f"{url}/healthz") == 200, timeout=30, what="ingest alive")
        answer = ready(url)
        assert answer.status_code == 503
        assert answer.json()["checks"] == {"mqtt": False, "database": True}
        assert scrape(url)["chargeline_mqtt_connected"][()] == 0
    finally:
        proc.stop()


def test_the_partner_stack_reports_commands_tokens_and_webhooks(
    partner: Partner, installation: Installation, tmp_path: Path
) -> None:
    """Every process of the stack is ready and alive on its ops listener; a start and a
    stop show in the gateway's command counters and start times, the tokens in the
    authorization server's, the webhooks in the deliverer's. The public ports answer
    health and readiness too (for a load balancer); metrics stay off them."""
    for name, url in partner.ops.items():
        wait_for(
            lambda url=url: status_of(f"{url}/readyz") == 200, timeout=30, what=f"{name} ready"
        )
        assert httpx2.get(f"{url}/healthz").json() == {"status": "alive", "process": name}
    checks = {name: ready(url).json()["checks"] for name, url in partner.ops.items()}
    assert checks == {
        "auth": {"database": True},
        "gateway": {"database": True, "mqtt": True},
        "webhooks": {"database": True},
        "ingest": {"mqtt": True, "database": True},
    }
    assert ready(partner.api).json()["status"] == "ready"
    assert httpx2.get(f"{partner.api}/metrics").status_code == 404

    outlet = f"{installation.controllers[0]}-3"
    started = partner.post("/v1/charges", {"outlet_id": outlet, "charge_id": "ops-1"})
    assert started.status_code == 201, started.text
    assert partner.post("/v1/charges/ops-1/stop").status_code == 200
    wait_for(
        lambda: "charge.stopped" in [w["type"] for w in partner.webhooks("ops-1")],
        timeout=30,
        what="the charge.stopped webhook",
    )

    gateway = scrape(partner.ops["gateway"])
    commands = gateway["chargeline_commands_total"]
    assert commands[(("outcome", "applied"), ("state", "on"))] == 1
    assert commands[(("outcome", "applied"), ("state", "off"))] == 1
    assert sum(commands.values()) == 2
    assert gateway["chargeline_api_start_seconds_count"][()] == 1
    assert gateway["chargeline_command_answer_seconds_count"][(("state", "on"),)] == 1
    assert gateway["chargeline_mqtt_connected"][()] == 1

    wrong = httpx2.post(
        partner.token_url,
        data={"grant_type": "client_credentials"},
        auth=(partner.client.client_id, "not-the-secret"),
    )
    assert wrong.status_code == 401
    auth = scrape(partner.ops["auth"])
    assert auth["chargeline_tokens_issued_total"][()] >= 2  # the partner's and the reader's
    refused = auth["chargeline_token_requests_refused_total"]
    assert refused[(("error", "invalid_client"),)] == 1 and sum(refused.values()) == 1

    def delivered() -> float | None:
        deliveries = scrape(partner.ops["webhooks"])["chargeline_webhook_deliveries_total"]
        count = deliveries[(("outcome", "delivered"),)]
        return count if count >= 3 else None  # started, current rise or not, stopped

    assert wait_for(delivered, timeout=30, what="the deliveries counted") >= 3
    wait_for(  # the edge's minutes (one a second here) reach ingest's counters
        lambda: scrape(partner.ops["ingest"])["chargeline_ingest_readings_stored_total"][()] > 0,
        timeout=30,
        what="readings counted",
    )
    for url in partner.ops.values():
        lint(url)

    # The sites' allocator: ready, leading the partner's site, its gauges per site.
    loads = start_loads(installation)
    wait_for(lambda: status_of(f"{loads}/readyz") == 200, timeout=30, what="loads ready")
    assert ready(loads).json()["checks"] == {"mqtt": True, "database": True}
    site = wait_for(
        lambda: scrape(loads).get("chargeline_site_cap_amperes", {}).get((("site", "test-site"),)),
        timeout=30,
        what="the site's cap served",
    )
    assert site == 90.0  # the default: the 100 A contract less 10 %
    lint(loads)

    # Every metric the alarms and the dashboard name (deploy/prometheus, deploy/grafana)
    # is one these processes and a broker serve.
    served = {name for url in [*partner.ops.values(), loads] for name in scrape(url)}
    broker_ops = f"127.0.0.1:{free_port()}"
    broker = Broker(tmp_path)
    broker.proc.env["CHARGELINE_OPS_BIND"] = broker_ops
    broker.start()
    try:
        wait_for(lambda: status_of(f"http://{broker_ops}/readyz") == 200, timeout=30, what="broker")
        served |= set(scrape(f"http://{broker_ops}"))
    finally:
        broker.proc.stop()
    assert named_metrics() <= served, named_metrics() - served


def test_the_broker_counts_its_connections_and_refusals(tmp_path: Path) -> None:
    ops = f"127.0.0.1:{free_port()}"
    url = f"http://{ops}"
    broker = Broker(tmp_path)
    broker.proc.env["CHARGELINE_OPS_BIND"] = ops
    broker.start()
    wait_for(lambda: status_of(f"{url}/readyz") == 200, timeout=30, what="broker ready")
    assert ready(url).json()["checks"] == {"accepting": True}
    idle = scrape(url)["chargeline_broker_connections"][()]

    async def hold() -> float:
        async with mqtt.client(MqttUrl(broker.url), identifier="ops-held"):
            return scrape(url)["chargeline_broker_connections"][()]

    assert asyncio.run(hold()) == idle + 1
    refusals = scrape(url)["chargeline_broker_refusals_total"]
    assert {labels[0][1] for labels in refusals} == {
        "connect",
        "publish",
        "subscribe",
        "receive",
        "capped",
    }
    lint(url)
    broker.proc.stop()


def test_a_taken_ops_port_stops_the_process_with_one_clear_line(
    installation: Installation,
) -> None:
    """A monitoring port already in use is a mistake to fix, not a gap to discover later."""
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = installation.ingest(ops_bind=f"127.0.0.1:{port}").start()
        assert proc.wait(60) == 1
    assert f"chargeline: ops_bind 127.0.0.1:{port}: Address already in use" in proc.log()
    assert "Traceback" not in proc.log()

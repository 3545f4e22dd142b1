"""Every long-running process answers its operator's monitoring (issue 18): ``/healthz``,
``/readyz`` naming what is not ready, and ``/metrics`` in Prometheus's text format, read
here with the Prometheus project's own parser."""

from __future__ import annotations

import asyncio
import time

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from kernel import mqtt
from kernel.settings import MqttUrl
from schemas.codec import encode
from schemas.messages import MeterBatch, MeterFrame, OutletReading
from schemas.topics import Topics
from tests.conftest import Installation
from tests.procs import free_port, wait_for

pytestmark = pytest.mark.processes


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``/metrics`` as name → {labels: value}, each sample under its full name."""
    answer = httpx2.get(f"{url}/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=")
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(answer.text):
        assert family.name.startswith("chargeline_"), family.name
        assert family.documentation, f"{family.name} has no help text"
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def ready(url: str) -> httpx2.Response:
    return httpx2.get(f"{url}/readyz", timeout=10)


def status_of(url: str) -> int | None:
    """The answer's status, or None while nothing listens yet."""
    try:
        return httpx2.get(url, timeout=10).status_code
    except httpx2.TransportError:
        return None


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
    proc = installation.ingest(ops_bind=ops).start()
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
        publish(installation.mqtt_url, [(topics.meter(cid), good), (topics.meter(cid), b"\xc1")])

        def counted() -> dict[str, dict[tuple[tuple[str, str], ...], float]] | None:
            now = scrape(url)
            return now if now["chargeline_ingest_messages_received_total"][()] >= 2 else None

        after = wait_for(counted, timeout=30, what="both messages counted")
        assert after["chargeline_ingest_readings_stored_total"][()] == 3
        assert after["chargeline_ingest_batches_stored_total"][()] == 1
        dead = after["chargeline_ingest_dead_letters_total"]
        assert dead[(("reason", "undecodable"),)] == 1
        assert sum(dead.values()) == 1  # every kind is exported, the others at 0
        assert len(dead) >= 7
        writes = after["chargeline_ingest_database_write_seconds_count"][()]
        assert writes >= 1 and after["chargeline_ingest_database_writes_total"][()] == writes
        assert after["chargeline_ingest_lag_seconds"][()] >= 0
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

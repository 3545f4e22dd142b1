"""chargeline's own processes through a broker with the access policy: edge agents and
ingest over TLS and mutual TLS on amqtt, and two ingest workers sharing the load with
``$share/`` subscriptions on a Mosquitto configured by the export."""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg
import pytest

from broker import identities
from broker.policy import Role
from tests.brokers import Amqtt, BrokerUnderTest, Mosquitto, Site
from tests.conftest import Installation
from tests.db import query
from tests.procs import Proc

pytestmark = pytest.mark.processes

MINUTES = 12


def _installation(site: Site, broker: BrokerUnderTest) -> Installation:
    # The broker's policy covers the default topic root.
    return Installation(
        database=site.database,
        mqtt_url=broker.url("tcp"),
        tmp=broker.tmp,
        controllers=site.controllers[:2],
        outlets=2,
        topic_root="cl/v1",
    )


def _login(broker: BrokerUnderTest, name: str, listener: str = "tcp") -> str:
    return broker.url(listener, user=name, password=broker.site.passwords[name])


def _minutes_per_controller(database: str, controllers: list[str]) -> list[tuple[str, int, int]]:
    return query(
        database,
        "SELECT controller_id, count(*), count(DISTINCT minute) FROM outlet_readings"
        " WHERE controller_id = ANY(%s) GROUP BY 1 ORDER BY 1",
        controllers,
    )


@pytest.fixture(scope="module")
def amqtt(site: Site, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerUnderTest]:
    broker = Amqtt(site, tmp_path_factory.mktemp("amqtt"))
    broker.start()
    yield broker
    broker.stop()


def test_edges_and_ingest_work_over_tls_and_mutual_tls(amqtt: BrokerUnderTest) -> None:
    """Edge A logs in with its password on the TLS listener, edge B with its certificate on
    the mTLS listener, ingest with its password over TLS: every minute arrives once."""
    site, inst = amqtt.site, _installation(amqtt.site, amqtt)
    assert site.ca is not None
    ca = str(site.ca.cert_path)
    inst.ingest(mqtt_url=_login(amqtt, "svc_ingest", "tls"), mqtt_ca_file=ca).start()
    clients = site.ca.dir / "clients"
    edges = [
        inst.edge(site.a, minutes=MINUTES, mqtt_url=_login(amqtt, site.a, "tls"), mqtt_ca_file=ca),
        inst.edge(
            site.b,
            minutes=MINUTES,
            mqtt_url=amqtt.url("mtls"),
            mqtt_ca_file=ca,
            mqtt_cert_file=clients / f"{site.b}.pem",
            mqtt_key_file=clients / f"{site.b}.key",
        ),
    ]
    for edge in edges:
        edge.start()
    for edge in edges:
        assert edge.wait(120) == 0, edge.log()[-3000:]
    assert _minutes_per_controller(site.database, [site.a, site.b]) == [
        (site.a, MINUTES * 2, MINUTES),
        (site.b, MINUTES * 2, MINUTES),
    ]


def test_two_ingest_workers_split_the_load_on_mosquitto(
    site: Site, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With share_group set, two ingest workers (two identities) each take part of the
    batches and together store every minute once."""
    with psycopg.connect(site.database, autocommit=True) as conn:
        site.passwords["svc_ingest-2"] = identities.issue(conn, "svc_ingest-2", Role.INGEST)
    broker = Mosquitto(site, tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        inst = _installation(site, broker)
        workers = [
            inst.ingest(mqtt_url=_login(broker, name), share_group="ingest").start()
            for name in ("svc_ingest", "svc_ingest-2")
        ]
        with psycopg.connect(site.database, autocommit=True) as conn:
            conn.execute("DELETE FROM outlet_readings")
        edges = [
            inst.edge(cid, minutes=MINUTES, mqtt_url=_login(broker, cid)).start()
            for cid in (site.a, site.b)
        ]
        for edge in edges:
            assert edge.wait(120) == 0, edge.log()[-3000:]
        assert _minutes_per_controller(site.database, [site.a, site.b]) == [
            (site.a, MINUTES * 2, MINUTES),
            (site.b, MINUTES * 2, MINUTES),
        ]
        for worker in workers:
            worker.stop()
        stored = [_readings_logged(worker) for worker in workers]
        assert all(n > 0 for n in stored) and sum(stored) >= MINUTES * 2 * 2, stored
    finally:
        broker.stop()


def _readings_logged(worker: Proc) -> int:
    found = re.findall(r"ingest totals at stop: \{[^}]*'readings': (\d+)", worker.log())
    assert found, worker.log()[-2000:]
    return int(found[-1])

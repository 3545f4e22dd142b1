"""What ingest tells its monitoring (``kernel.ops``): ready when its MQTT link is up and
its last database write (or connection) succeeded; metrics read from its counters when
scraped, so counting costs the receive path nothing."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ingest.triage import Refusal
from ingest.worker import Ingest
from kernel.ops import Probe, by_label
from schemas.messages import EdgeEventKind


def probe(worker: Ingest) -> Probe:
    async def mqtt() -> bool:
        return worker.mqtt_connected

    async def database() -> bool:
        return worker.database_ok

    found = Probe("ingest", {"mqtt": mqtt, "database": database})
    found.collect(_Metrics(worker))
    found.collect(worker.write_seconds)
    return found


class _Metrics(Collector):
    def __init__(self, worker: Ingest) -> None:
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        worker, c = self.worker, self.worker.counters
        counters = (
            ("messages_received", "messages taken from the broker", c.messages),
            (
                "readings_stored",
                "outlet readings committed (a resent minute counts again)",
                c.readings,
            ),
            ("batches_stored", "meter batches committed", c.batches),
            ("batch_acks_sent", "meter/ack messages sent after commits", c.acks),
            ("database_writes", "database writes committed", c.writes),
            (
                "database_write_failures",
                "database writes that failed and were retried",
                c.write_failures,
            ),
        )
        for name, documentation, value in counters:
            yield CounterMetricFamily(f"chargeline_ingest_{name}", documentation, value=value)
        yield by_label(
            CounterMetricFamily,
            "chargeline_ingest_dead_letters",
            "messages kept as dead letters instead of stored, by kind of refusal",
            "reason",
            {kind.value: c.refused[kind] for kind in Refusal},
        )
        yield by_label(
            CounterMetricFamily,
            "chargeline_ingest_edge_events",
            "edge events stored, by kind (breaker_failed and overcurrent_trip are alarms)",
            "kind",
            {kind.value: c.events[kind] for kind in EdgeEventKind},
        )
        fleet = worker.fleet
        if fleet is not None:
            yield by_label(
                GaugeMetricFamily,
                "chargeline_controllers",
                "registered controllers by presence (offline: also never heard from)",
                "state",
                {"online": fleet.online, "offline": fleet.offline},
            )
            yield GaugeMetricFamily(
                "chargeline_meter_batches_missing",
                "meter batches missing between those stored, over the whole fleet (meter_seq_gaps)",
                value=fleet.missing_batches,
            )
        yield GaugeMetricFamily(
            "chargeline_ingest_lag_seconds",
            "how long the oldest message not yet committed has waited",
            value=worker.lag_s(),
        )
        yield GaugeMetricFamily(
            "chargeline_ingest_pending_messages",
            "messages received and waiting for the next database write",
            value=worker.pending_messages,
        )
        yield GaugeMetricFamily(
            "chargeline_mqtt_connected",
            "1 while the MQTT link is up",
            value=int(worker.mqtt_connected),
        )

"""What the OCPP bridge tells its monitoring (``kernel.ops``): ready when its MQTT link and
its journal's database are up; metrics read from its state when scraped."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kernel.ops import Probe, by_label
from ocpp_bridge.bridge import Bridge


def probe(bridge: Bridge) -> Probe:
    async def mqtt() -> bool:
        return bridge.mqtt_connected

    async def database() -> bool:
        return bridge.journal.ok

    found = Probe("ocpp", {"mqtt": mqtt, "database": database})
    found.collect(_Metrics(bridge))
    return found


class _Metrics(Collector):
    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge

    def collect(self) -> Iterator[Metric]:
        bridge = self.bridge
        yield by_label(
            GaugeMetricFamily,
            "chargeline_ocpp_stations",
            "registered OCPP stations by connection",
            "state",
            {
                "connected": len(bridge.links),
                "disconnected": len(bridge.stations) - len(bridge.links),
            },
        )
        yield CounterMetricFamily(
            "chargeline_ocpp_frames_logged",
            "OCPP frames written to the raw frame log",
            value=bridge.journal.frames_logged,
        )
        failures: dict[str, int] = {}
        for station in bridge.stations.values():
            for reason, count in station.failures.items():
                failures[reason] = failures.get(reason, 0) + count
        yield by_label(
            CounterMetricFamily,
            "chargeline_ocpp_command_failures",
            "starts and stops a station did not carry out, by reason",
            "reason",
            failures,
        )
        yield by_label(
            CounterMetricFamily,
            "chargeline_ocpp_refused_connections",
            "WebSocket upgrades refused, by reason",
            "reason",
            dict(bridge.refusals),
        )

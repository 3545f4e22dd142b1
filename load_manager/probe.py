"""What the sites' allocator tells its monitoring (``kernel.ops``): ready when its MQTT link
and its database are up; metrics read from its state when scraped."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kernel.ops import Probe
from load_manager.runner import LoadManager


def probe(manager: LoadManager) -> Probe:
    async def mqtt() -> bool:
        return manager.mqtt_connected

    async def database() -> bool:
        return manager.database_ok

    found = Probe("loads", {"mqtt": mqtt, "database": database})
    found.collect(_Metrics(manager))
    return found


class _Metrics(Collector):
    def __init__(self, manager: LoadManager) -> None:
        self.manager = manager

    def collect(self) -> Iterator[Metric]:
        m = self.manager
        cap = GaugeMetricFamily(
            "chargeline_site_cap_amperes", "the cap in force at each site led", labels=["site"]
        )
        current = GaugeMetricFamily(
            "chargeline_site_current_amperes",
            "the site's current as last measured (building and outlets)",
            labels=["site"],
        )
        waiting = GaugeMetricFamily(
            "chargeline_site_waiting_charges",
            "charges queued or paused for room under the cap",
            labels=["site"],
        )
        for site_id, led in sorted(m.led.items()):
            if led.cap is not None:
                cap.add_metric([site_id], led.cap.amps)
                current.add_metric([site_id], led.site_a)
                waiting.add_metric([site_id], led.waiting)
        yield cap
        yield current
        yield waiting
        yield GaugeMetricFamily(
            "chargeline_sites_led", "sites this instance leads", value=len(m.led)
        )
        yield CounterMetricFamily(
            "chargeline_budgets_published",
            "budgets published to controllers",
            value=m.budgets_published,
        )
        yield CounterMetricFamily(
            "chargeline_load_reports_refused",
            "load reports that did not decode or named another controller",
            value=m.bad_reports,
        )

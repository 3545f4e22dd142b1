"""A process's ops listener as the monitoring sees it: ``/metrics`` scraped and checked by
Prometheus's own ``promtool``, ``/readyz``."""

from __future__ import annotations

import shutil
import subprocess

import httpx2
from prometheus_client.parser import text_string_to_metric_families


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


def lint(url: str) -> None:
    """Prometheus's own check of metric names, types and help (``promtool check metrics``,
    from Debian's prometheus package, which scripts/test installs)."""
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    text = httpx2.get(f"{url}/metrics").text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0 and not checked.stdout.strip(), checked.stdout + checked.stderr


def ready(url: str) -> httpx2.Response:
    return httpx2.get(f"{url}/readyz", timeout=10)

"""deploy/prometheus/ and deploy/grafana/: the scrape configuration and the alarms pass
Prometheus's own checks (``promtool check`` and the rules' unit tests in
alerts.test.yml), and every query of the Grafana dashboard's database panels runs as the
analyst role. That every metric they name is one the processes serve is checked against
the running stack (tests/test_ops_e2e.py)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

DEPLOY = Path(__file__).parent.parent / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARD = DEPLOY / "grafana" / "chargeline.json"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install prometheus"
    return subprocess.run(
        [found, *args], cwd=PROMETHEUS, capture_output=True, text=True, check=False
    )


def named_metrics() -> set[str]:
    """Every chargeline metric the alarms' and the dashboard's queries name."""
    rules = [
        line.partition("expr:")[2]
        for line in (PROMETHEUS / "alerts.yml").read_text().splitlines()
        if line.strip().startswith("expr:")
    ]
    queries = [t["expr"] for p in panels() for t in p["targets"] if "expr" in t]
    return set(re.findall(r"\bchargeline_[a-z_]+[a-z]", "\n".join(rules + queries)))


def panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return found


@pytest.mark.pure
@pytest.mark.parametrize(
    "check",
    [
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts.test.yml"),
    ],
    ids=" ".join,
)
def test_prometheus_accepts_the_configuration_and_the_alarms_fire_as_meant(
    check: tuple[str, ...],
) -> None:
    done = promtool(*check)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.pure
def test_the_dashboard_is_importable() -> None:
    document = json.loads(DASHBOARD.read_text())
    assert document["uid"] and document["title"] and document["schemaVersion"] >= 36
    inputs = {i["name"] for i in document["__inputs"]}
    assert inputs == {"DS_PROMETHEUS", "DS_POSTGRES"}
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] in ("${DS_PROMETHEUS}", "${DS_POSTGRES}")
        assert panel["targets"] and all(("expr" in t) != ("rawSql" in t) for t in panel["targets"])
    assert len(named_metrics()) >= 15


@pytest.mark.database
def test_every_dashboard_query_runs_as_the_analyst(database: str) -> None:
    """The dashboard's PostgreSQL data source is a login in chargeline_analyst: each query
    must work with that role's grants alone (read-only, no secrets)."""
    queries = [t["rawSql"] for p in panels() for t in p["targets"] if "rawSql" in t]
    assert len(queries) == 4
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("SET ROLE chargeline_analyst")
        for query in queries:
            conn.execute(query).fetchall()

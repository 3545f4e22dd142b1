"""The systemd units in deploy/systemd/: Type=notify with a watchdog (kernel/systemd.py
feeds it), an ops listener each, and sandboxing that ``systemd-analyze security`` (run
offline on the unit files) rates 2.0 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

UNITS = sorted((Path(__file__).parent.parent / "deploy" / "systemd").glob("*.service"))


def settings(unit: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def analyze() -> str:
    found = shutil.which("systemd-analyze")
    assert found, "systemd-analyze is missing: apt-get install systemd"
    return found


def test_every_service_is_found() -> None:
    assert {u.name for u in UNITS} == {
        "chargeline-auth.service",
        "chargeline-broker.service",
        "chargeline-edge@.service",
        "chargeline-gateway.service",
        "chargeline-ingest.service",
        "chargeline-loads.service",
        "chargeline-ocpp.service",
        "chargeline-webhooks.service",
    }


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_a_unit_is_notify_with_a_watchdog(unit: Path) -> None:
    found = settings(unit)
    assert found["Type"] == ["notify"] and found["NotifyAccess"] == ["main"]
    assert 0 < int(found["WatchdogSec"][0]) <= 60
    ops = [e for e in found["Environment"] if e.startswith("CHARGELINE_OPS_BIND=")]
    if "edge" not in unit.name:
        assert len(ops) == 1 and ops[0].startswith("CHARGELINE_OPS_BIND=127.0.0.1:")


def test_each_service_has_its_own_ops_port() -> None:
    ports = [
        e.rpartition(":")[2]
        for unit in UNITS
        for e in settings(unit).get("Environment", [])
        if e.startswith("CHARGELINE_OPS_BIND=")
    ]
    assert len(ports) == 7 and len(set(ports)) == 7


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_systemd_rates_the_sandbox_2_or_lower(unit: Path) -> None:
    rated = subprocess.run(
        [analyze(), "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d)", rated.stdout)
    assert level, rated.stdout + rated.stderr
    assert float(level.group(1)) <= 2.0, rated.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.stem)
def test_systemd_finds_nothing_wrong_with_the_unit(unit: Path) -> None:
    """``systemd-analyze verify``: only the installed program is missing on this machine."""
    verified = subprocess.run(
        [analyze(), "verify", str(unit)], capture_output=True, text=True, check=False
    )
    complaints = [
        line
        for line in (verified.stdout + verified.stderr).splitlines()
        if line.strip() and "/opt/chargeline/.venv/bin/chargeline is not executable" not in line
    ]
    assert not complaints, complaints

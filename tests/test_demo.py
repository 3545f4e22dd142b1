"""The README's main command: `chargeline demo` on embedded defaults, as a newcomer runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import query


@pytest.mark.slow
def test_demo_runs_the_partner_flow_and_stores_what_it_reports(tmp_path: Path) -> None:
    """Residents charge through the partner; the summary adds up, and the database agrees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGELINE_")}
    env["CHARGELINE_DATA_DIR"] = str(tmp_path)
    args = ["demo", "--duration", "25", "--time-scale", "120", "--fresh", "--seed", "7"]
    result = subprocess.run(
        [sys.executable, "-m", "chargeline", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "summary after" in result.stdout, output  # not a terminal: plain lines

    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    charges, webhooks = summary["charges"], summary["webhooks"]
    assert charges["started"] >= 10 and charges["stopped"] == charges["started"], charges
    assert charges["failed"] == 0 and charges["still_running"] == 0, charges
    assert charges["stopped_without_energy"] == 0 and summary["energy_kwh"] > 0, summary
    # Every webhook was delivered, verified by the partner, and each is a charge's step.
    assert webhooks["written"] == webhooks["delivered"] == webhooks["received_by_partner"]
    assert webhooks["bad_signatures"] == 0 and webhooks["gave_up"] == 0
    by_type = webhooks["by_type"]
    assert by_type["charge.started"] == by_type["charge.stopped"] == charges["started"]
    assert by_type["charge.current_rise"] >= charges["started"] - 2  # the last ones may not
    assert by_type.get("outlet.status", 0) >= 1
    assert summary["latency_ms"]["start_to_breaker"]["count"] == charges["started"]

    # The embedded server stopped with the demo; start it again to check its numbers.
    from chargeline.database import embedded_url

    url = embedded_url(tmp_path / "demo")
    store = summary["store"]
    readings, minutes = query(url, "SELECT count(*), count(DISTINCT minute) FROM outlet_readings")[
        0
    ]
    assert (readings, minutes) == (store["outlet_readings"], store["minutes"])
    assert store["outlet_readings_this_run"] == readings  # --fresh
    # Every outlet has every minute from its first to its last: nothing lost, nothing twice.
    spans = query(
        url,
        "SELECT count(*), (extract(epoch FROM max(minute) - min(minute)) / 60)::int + 1"
        " FROM outlet_readings GROUP BY controller_id, outlet_no",
    )
    assert len(spans) == 24 and all(count == span >= 20 for count, span in spans), spans
    assert query(url, "SELECT count(*) FROM meter_seq_gaps") == [(0,)]
    stopped = query(url, "SELECT count(*), min(energy_wh) FROM charges WHERE state = 'stopped'")[0]
    assert stopped[0] == charges["stopped"] and stopped[1] > 0


@pytest.mark.slow
def test_ctrl_c_winds_the_demo_down_and_stops_everything(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group, as in a terminal: the residents still stop
    their charges through the API, the summary comes out, and no process is left behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGELINE_")}
    env["CHARGELINE_DATA_DIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chargeline", "demo", "--time-scale", "120", "--fresh"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,  # its own group, like a shell's foreground job
    )
    assert proc.stdout is not None
    output = []
    for line in proc.stdout:  # until the first charge has started
        output.append(line)
        if " started" in line:
            break
    os.killpg(proc.pid, signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    output.append(rest)
    assert proc.returncode == 0, "".join(output)
    summary = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert summary["charges"]["started"] >= 1 and summary["charges"]["still_running"] == 0
    assert summary["charges"]["stopped"] == summary["charges"]["started"], summary["charges"]
    left = [pid for pid in _processes_with(str(tmp_path)) if pid != os.getpid()]
    assert left == [], f"processes left running: {left}"


def _processes_with(text: str) -> list[int]:
    """Processes whose command line or environment mentions ``text`` (the demo's data
    directory: the gateway, the authorization server, the embedded PostgreSQL)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            seen = (proc / "cmdline").read_bytes() + (proc / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in seen:
            found.append(int(proc.name))
    return found

"""The README's main command: `chargeline demo` on embedded defaults, as a newcomer runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.db import query
from tests.procs import wait_for

pytestmark = pytest.mark.processes


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
    seen = f"{json.dumps(summary, indent=1)}\n{output}"  # the partner's feed says why
    by_type = webhooks["by_type"]
    # The site is oversubscribed at its busiest (load management): charges wait their turn,
    # queued or paused, and some residents leave before theirs came; nothing else fails.
    assert charges["waited"] >= 1 and by_type["charge.paused"] == charges["waited"], seen
    assert charges["failed"] == charges["left_before_their_turn"], seen
    assert charges["still_running"] == 0, seen
    started = by_type["charge.started"]  # at once, or when their turn came
    assert started >= 10 and charges["stopped"] == started, seen
    assert charges["stopped_without_energy"] == 0 and summary["energy_kwh"] > 0, seen
    # Every webhook was delivered, verified by the partner, and each is a charge's step.
    assert webhooks["written"] == webhooks["delivered"] == webhooks["received_by_partner"], seen
    assert webhooks["bad_signatures"] == 0 and webhooks["gave_up"] == 0, seen
    # Every charge that started and never waited heard its current rise (but the last ones);
    # one paused before its car drew may have none.
    assert charges["no_rise_without_waiting"] <= 2, seen
    assert by_type.get("outlet.status", 0) >= 1
    assert summary["latency_ms"]["start_to_breaker"]["count"] == charges["started"]

    # The embedded server stopped with the demo; start it again to check its numbers.
    from store.database import embedded_url

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
    # 3 controllers × 8 outlets, and the two OCPP stations' connectors.
    assert len(spans) == 24 + 2 and all(count == span >= 20 for count, span in spans), spans
    assert query(url, "SELECT count(*) FROM meter_seq_gaps") == [(0,)]
    stopped = query(
        url,
        "SELECT count(*), count(*) FILTER (WHERE energy_wh <= 0) FROM charges"
        " WHERE state = 'stopped'",
    )[0]
    # Without energy: only a charge paused before its car drew, then stopped.
    assert stopped == (charges["stopped"], charges["stopped_while_waiting_without_energy"])


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
    charges, started = summary["charges"], summary["webhooks"]["by_type"].get("charge.started", 0)
    assert started >= 1 and charges["still_running"] == 0, charges
    # Every charge that started (at once, or when its turn came) was stopped; the rest
    # waited their turn and were stopped before it came.
    assert charges["stopped"] == started, charges
    assert charges["failed"] == charges["left_before_their_turn"], charges
    wait_for(  # the server's reaper notices it stopped within a second
        lambda: not [pid for pid in _processes_with(str(tmp_path)) if pid != os.getpid()],
        timeout=15,
        what="no process left running",
    )


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


@pytest.mark.slow
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL], ids=["SIGTERM", "SIGHUP", "SIGKILL"]
)
def test_every_way_out_of_the_demo_stops_what_it_started(tmp_path: Path, sig: int) -> None:
    """SIGTERM (a service manager), SIGHUP (its terminal closed) and SIGKILL (a crash) to
    the demo alone: its gateway, authorization server and embedded PostgreSQL all stop."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGELINE_")}
    env["CHARGELINE_DATA_DIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "chargeline", "demo", "--time-scale", "120", "--fresh", "--plain"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # the gateway and the authorization server are up
        if "time:" in line:
            break
    wait_for(
        lambda: len(_processes_with(str(tmp_path))) >= 4,  # demo, auth, gateway, postgres
        timeout=60,
        what="the demo's processes",
    )
    proc.send_signal(sig)
    proc.communicate(timeout=120)
    wait_for(
        lambda: not [pid for pid in _processes_with(str(tmp_path)) if pid != os.getpid()],
        timeout=30,
        what=f"every process the demo started to stop after {signal.Signals(sig).name}",
    )


@pytest.mark.slow
def test_a_second_run_adds_its_own_minutes_and_the_printed_query_works(tmp_path: Path) -> None:
    """A rerun on the same data stores new minutes (its clock starts after the first run's),
    the summary names every way charges ended, and its "try" command runs as printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGELINE_")}
    env["CHARGELINE_DATA_DIR"] = str(tmp_path)
    runs = []
    for fresh in (["--fresh"], []):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "chargeline",
                "demo",
                "--duration",
                "10",
                "--seed",
                "3",
                "--time-scale",
                "120",
                *fresh,
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=240,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        runs.append(json.loads((tmp_path / "demo" / "summary.json").read_text()))
        assert "  endings      " in result.stdout
        assert " db shell -c " in result.stdout  # the printed "try" line
    first, second = runs
    assert second["store"]["outlet_readings_this_run"] > 0, second["store"]
    assert second["store"]["outlet_readings"] == (
        first["store"]["outlet_readings"] + second["store"]["outlet_readings_this_run"]
    )
    assert sum(second["charges"]["endings"].values()) == (
        second["charges"]["stopped"] + second["charges"]["failed"]
    )
    # The printed command: CHARGELINE_DATA_DIR=… chargeline db shell (here through python -m).
    shell = second["shell"]
    assert shell.startswith(f"CHARGELINE_DATA_DIR={tmp_path / 'demo'} ") and shell.endswith(
        " db shell"
    )
    query_run = subprocess.run(
        [sys.executable, "-m", "chargeline", "db", "shell", "-c", second["try_sql"]],
        capture_output=True,
        text=True,
        env={**env, "CHARGELINE_DATA_DIR": str(tmp_path / "demo")},
        timeout=60,
    )
    assert query_run.returncode == 0 and "(10 rows)" in query_run.stdout, query_run


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--duration", "-5"], "--duration must be a positive number"),
        (["--duration", "0"], "--duration must be a positive number"),
        (["--outlets", "9"], "--outlets must be 1..8"),
    ],
)
def test_bad_demo_options_are_refused(tmp_path: Path, option: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGELINE_")}
    env["CHARGELINE_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "chargeline", "demo", *option],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 2 and message in result.stderr


@pytest.mark.slow
def test_services_sharing_the_embedded_database_stop_it_when_the_last_one_stops(
    tmp_path: Path,
) -> None:
    """ingest and the authorization server, each started on its own on one data directory
    (so one embedded PostgreSQL): SIGTERM to both, and nothing of theirs keeps running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGELINE_")}
    env["CHARGELINE_DATA_DIR"] = str(tmp_path)
    env["CHARGELINE_AUTH_BIND"] = "127.0.0.1:0"
    services = [
        subprocess.Popen(
            [sys.executable, "-m", "chargeline", command],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        for command in ("ingest", "auth")
    ]
    wait_for(
        lambda: (
            (tmp_path / "postgres" / "postmaster.pid").exists()
            and len(_processes_with(str(tmp_path))) >= 3
        ),
        timeout=60,
        what="both services and their database",
    )
    for service in services:
        service.send_signal(signal.SIGTERM)
    for service in services:
        service.wait(timeout=30)
    wait_for(
        lambda: not [pid for pid in _processes_with(str(tmp_path)) if pid != os.getpid()],
        timeout=30,
        what="the embedded PostgreSQL to stop with the last service",
    )

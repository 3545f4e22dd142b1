"""Where settings come from, and the installation's clock."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from chargeline import settings


def test_systemd_credentials_fill_settings_below_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "chargeline_database_url").write_text("postgresql://ingest:s3cret@db/charge")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    monkeypatch.delenv("CHARGELINE_DATABASE_URL", raising=False)
    assert settings.load(settings.IngestSettings).database_url == (
        "postgresql://ingest:s3cret@db/charge"
    )
    monkeypatch.setenv("CHARGELINE_DATABASE_URL", "postgresql://from-env/charge")
    assert settings.load(settings.IngestSettings).database_url == "postgresql://from-env/charge"


def test_an_accelerated_installation_shares_one_clock() -> None:
    real = settings.load(settings.CommonSettings, time_scale=60)
    assert abs(real.now() - time.time()) < 1  # without an origin the cloud keeps real time
    origin = time.time() - 10
    a = settings.load(settings.GatewaySettings, time_scale=60, time_origin=origin)
    b = settings.load(settings.EdgeSettings, time_scale=60, time_origin=origin)
    expected = origin + (time.time() - origin) * 60
    assert abs(a.now() - expected) < 5 and abs(b.now() - a.now()) < 5  # 600 s in

"""Fixtures: a real PostgreSQL and a real amqtt broker on loopback, shared per session;
a fresh database, topic root and set of controller ids per test."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from store import migrations
from store.registry import import_registry
from store.registry_file import ControllerEntry, OutletEntry, Registry, SiteEntry
from tests.procs import Proc, free_port, wait_port

pytest_plugins = ["tests.partners", "tests.stations"]  # the end-to-end tests' fixtures

# --- the run's own temporary directory --------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Give this run a temporary directory no other run touches.

    pytest's default, /tmp/pytest-of-USER, is shared by every run of that user: each run
    strips its group and other bits at start and prunes the numbered directories of
    earlier runs, and two runs side by side broke each other's embedded PostgreSQL
    ("Connection refused"). xdist workers get theirs below the controller's."""
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        path = Path(tempfile.mkdtemp(prefix="chargeline-tests-"))
        config.option.basetemp = str(path)
        config.stash[_OWN_BASETEMP] = path


def pytest_unconfigure(config: pytest.Config) -> None:
    path = config.stash.get(_OWN_BASETEMP, None)
    failed = getattr(config, "_chargeline_failed", True)
    if path is not None and not failed:
        shutil.rmtree(path, ignore_errors=True)
    elif path is not None:
        print(f"\nchargeline: this run's processes and logs are in {path}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config._chargeline_failed = exitstatus != 0  # type: ignore[attr-defined]


_OWN_BASETEMP = pytest.StashKey[Path]()


# --- PostgreSQL --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """CHARGELINE_DATABASE_URL when set, else an embedded PostgreSQL for this session."""
    configured = os.environ.get("CHARGELINE_DATABASE_URL")
    if configured:
        return configured
    from store.database import embedded_url

    return embedded_url(tmp_path_factory.mktemp("pg"))


def database_url_for(server_url: str, name: str) -> str:
    return psycopg.conninfo.make_conninfo(server_url, dbname=name)


@contextlib.contextmanager
def new_database(pg_url: str) -> Iterator[str]:
    """An empty database of its own on the test server, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield database_url_for(pg_url, name)
    finally:
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database(pg_url: str) -> Iterator[str]:
    """A new, migrated database for one test."""
    with new_database(pg_url) as url:
        migrations.upgrade(url)
        yield url


# --- processes ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _stop_processes(request: pytest.FixtureRequest) -> Iterator[None]:
    before = len(Proc.registry)
    yield
    mine = Proc.registry[before:]
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for proc in mine:
            print(f"\n----- {proc.name} log ({proc.log_path}) -----\n{proc.log()[-5000:]}")
    for proc in reversed(mine):
        proc.stop(timeout=10)
    del Proc.registry[before:]


TIERS = ("pure", "database", "processes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Every test is in exactly one tier (its module's ``pytestmark``), so ``-m pure`` or
    ``-m "not processes"`` selects what a change needs."""
    wrong = [
        f"{item.nodeid}: {tiers or 'no tier'}"
        for item in items
        if len(tiers := [m.name for m in item.iter_markers() if m.name in TIERS]) != 1
    ]
    if wrong:
        raise pytest.UsageError(
            "tests need exactly one tier marker " + str(TIERS) + ":\n" + "\n".join(wrong)
        )


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    report = yield
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]
    return report


class Broker:
    def __init__(self, tmp: Path) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc = Proc(
            f"broker-{self.port}",
            ["broker", "--bind", f"127.0.0.1:{self.port}"],
            # One broker serves every test's installation (each with its own database and
            # topic root), so it cannot take identities from any one registry: it runs
            # open. The access policy is tested on brokers of its own (test_broker_policy).
            {"CHARGELINE_DATA_DIR": str(tmp), "CHARGELINE_BROKER_ALLOW_ANONYMOUS": "true"},
            tmp,
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        self.proc.start()
        wait_port(self.port, proc=self.proc)
        return self


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """The project's amqtt broker, one process for the whole session."""
    b = Broker(tmp_path_factory.mktemp("broker")).start()
    Proc.registry.remove(b.proc)  # outlives the per-test cleanup
    yield b
    b.proc.stop()


@dataclass
class Installation:
    """One isolated chargeline installation: its own database, topic root and controllers."""

    database: str
    mqtt_url: str
    tmp: Path
    controllers: list[str]
    outlets: int = 8
    topic_root: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}/cl/v1")
    time_scale: float = 120.0
    #: Every process's clock runs ``time_scale`` times faster from this instant, so the
    #: cloud's times (in commands and meter acks) and the edges' agree, as in the demo.
    time_origin: float = field(default_factory=time.time)

    def now(self) -> float:
        """The installation's time (what the gateway writes as a command's issued_at)."""
        real = time.time()
        return self.time_origin + (real - self.time_origin) * self.time_scale

    def env(self, **extra: Any) -> dict[str, str]:
        env = {
            "CHARGELINE_DATABASE_URL": self.database,
            "CHARGELINE_MQTT_URL": self.mqtt_url,
            "CHARGELINE_TOPIC_ROOT": self.topic_root,
            "CHARGELINE_DATA_DIR": str(self.tmp / "data"),
            "CHARGELINE_TIME_SCALE": str(self.time_scale),
            "CHARGELINE_TIME_ORIGIN": repr(self.time_origin),
            "CHARGELINE_LOG_LEVEL": "INFO",
            "CHARGELINE_WEBHOOK_ALLOW_PRIVATE": "true",  # partners' receivers are on loopback
        }
        env.update({f"CHARGELINE_{k.upper()}": str(v) for k, v in extra.items()})
        return env

    def ingest(self, **extra: Any) -> Proc:
        extra.setdefault("registry_refresh_s", 1)
        return Proc(f"ingest-{uuid.uuid4().hex[:4]}", ["ingest"], self.env(**extra), self.tmp)

    def edge(
        self, cid: str, *, minutes: int | None, mqtt_url: str | None = None, **extra: Any
    ) -> Proc:
        """An edge agent; with ``minutes`` it exits once that many frames are acknowledged."""
        extra.setdefault("sample_interval_s", 10)
        extra.setdefault("ack_timeout_s", 2)
        extra.setdefault("sim_autoplay", "true")
        env = self.env(**extra)
        if mqtt_url:
            env["CHARGELINE_MQTT_URL"] = mqtt_url
        args = ["edge", "--controller-id", cid]
        if minutes is not None:
            args += ["--minutes", str(minutes)]
        return Proc(cid, args, env, self.tmp)


def registry_for(controllers: list[str], outlets: int) -> Registry:
    return Registry(
        sites=[
            SiteEntry(id="test-site", name="Test site", contract_current_a=100, tariff_per_kwh=30)
        ],
        controllers=[
            ControllerEntry(
                id=cid,
                site="test-site",
                outlets=[
                    OutletEntry(number=n, outlet_id=f"{cid}-{n}") for n in range(1, outlets + 1)
                ],
            )
            for cid in controllers
        ],
    )


@pytest.fixture
def installation(database: str, broker: Broker, tmp_path: Path) -> Installation:
    """Three registered controllers with eight outlets each, on the session broker."""
    tag = uuid.uuid4().hex[:6]
    controllers = [f"c{tag}-{i}" for i in range(1, 4)]
    import_registry(database, registry_for(controllers, 8))
    return Installation(
        database=database, mqtt_url=broker.url, tmp=tmp_path, controllers=controllers
    )


@pytest.fixture(scope="module")
def site(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A module's own database with controllers, their broker identities and a local CA
    (``tests.brokers.Site``), for brokers that enforce the access policy."""
    from tests.brokers import Site

    with new_database(pg_url) as url:
        migrations.upgrade(url)
        yield Site.create(url, tmp_path_factory.mktemp("site"))

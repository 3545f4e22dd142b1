"""Least privilege in the database (security review, finding 14): each service's login,
made by `chargeline db login`, reads what its service needs and nothing more. (The
partner end-to-end tests run auth, gateway, webhooks and ingest under such logins, which
proves the grants are enough.)"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from tests.brokers import Amqtt, Site
from tests.mqtt_wire import drain

pytestmark = pytest.mark.processes

SECRETS = {
    "MQTT password hashes": "SELECT argon2, pbkdf2 FROM mqtt_identities",
    "client secret hashes": "SELECT secret_sha256 FROM oauth_clients",
    "webhook secrets": "SELECT webhook_secret, previous_webhook_secret FROM oauth_clients",
}
#: What each service may read of them.
ALLOWED = {
    "broker": {"MQTT password hashes"},
    "auth": {"client secret hashes"},
    "gateway": set(),
    "webhooks": {"webhook secrets"},
    "ingest": set(),
}


def _chargeline(database: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The command line as an operator runs it, on ``database``."""
    return subprocess.run(
        [sys.executable, "-m", "chargeline", *args],
        env={"CHARGELINE_DATABASE_URL": database, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _login(database: str, service: str) -> str:
    """`chargeline db login`; the URL it prints."""
    done = _chargeline(database, "db", "login", f"r{uuid.uuid4().hex[:8]}", service)
    assert done.returncode == 0, done.stderr
    assert "Shown once" in done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("service", sorted(ALLOWED))
def test_each_service_reads_only_the_secrets_it_needs(database: str, service: str) -> None:
    url = _login(database, service)
    readable = set()
    with psycopg.connect(url, autocommit=True) as conn:
        for what, sql in SECRETS.items():
            try:
                conn.execute(sql).fetchall()
                readable.add(what)
            except errors.InsufficientPrivilege:
                pass
        # Every service can tell whether the schema is up to date (it never migrates).
        assert conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("CREATE TABLE intruder (x int)")
    assert readable == ALLOWED[service]


def test_a_login_for_an_unknown_service_or_a_bad_name_is_refused(database: str) -> None:
    for args in (["someone", "everything"], ["Robert'); DROP TABLE x;--", "gateway"]):
        done = _chargeline(database, "db", "login", *args)
        assert done.returncode == 2, done.stderr


def test_the_broker_runs_on_its_own_login(site: Site, tmp_path: Path) -> None:
    """The embedded broker with the broker login: controllers authenticate (their hashes
    are readable to it) and their messages flow."""
    broker = Amqtt(site, tmp_path, {"CHARGELINE_DATABASE_URL": _login(site.database, "broker")})
    broker.start()
    try:

        async def scenario() -> list[tuple[str, bytes]]:
            async with broker.client("svc_ingest") as ingest, broker.client(site.b) as b:
                await ingest.subscribe(f"cl/v1/ctl/{site.b}/meter", qos=1)
                await b.publish(f"cl/v1/ctl/{site.b}/meter", b"reading", qos=1)
                return await drain(ingest, 1.0)

        assert asyncio.run(scenario()) == [(f"cl/v1/ctl/{site.b}/meter", b"reading")]
    finally:
        broker.stop()


def test_a_service_login_facing_a_pending_migration_says_who_must_apply_it(
    database: str,
) -> None:
    url = _login(database, "gateway")
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = 15")
    done = _chargeline(url, "db", "upgrade")
    assert done.returncode == 1, done.stderr
    assert "0015_analyst_reads_batches_and_dead_letters is pending" in done.stderr
    assert "schema owner" in done.stderr and "Traceback" not in done.stderr

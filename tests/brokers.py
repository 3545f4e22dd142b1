"""Brokers under test with chargeline's access policy: the embedded amqtt broker, and a real
Mosquitto configured by ``chargeline broker export mosquitto``. Both are started from the
same registry, identities and certificates, through the CLI, as an operator would."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import psycopg

from broker import identities
from broker.pki import LocalCA
from broker.policy import Role
from kernel import mqtt
from kernel.settings import MqttUrl
from schemas.topics import Topics
from store.registry import import_registry
from tests.conftest import registry_for
from tests.procs import Proc, free_port, wait_port

MAX_PACKET = 64 * 1024
TOPICS = Topics()


@dataclass
class Site:
    """A registry with controllers, their passwords and certificates, and two services."""

    database: str
    tmp: Path
    controllers: list[str]
    passwords: dict[str, str] = field(default_factory=dict)
    ca: LocalCA | None = None

    @classmethod
    def create(cls, database: str, tmp: Path) -> Site:
        tag = uuid.uuid4().hex[:5]
        site = cls(database, tmp, [f"ca{tag}", f"cb{tag}", f"cr{tag}", f"cs{tag}"])
        import_registry(database, registry_for(site.controllers, 2))
        with psycopg.connect(database, autocommit=True) as conn:
            for name in site.controllers:
                site.passwords[name] = identities.issue(conn, name, Role.CONTROLLER)
            for role in (Role.INGEST, Role.GATEWAY):
                name = identities.DEFAULT_SERVICE_NAMES[role]
                site.passwords[name] = identities.issue(conn, name, role)
        site.ca = LocalCA(tmp / "pki")
        site.ca.init()
        site.ca.issue_server(["127.0.0.1", "localhost"])
        issued = site.ca.issue_client(site.b)
        with psycopg.connect(database, autocommit=True) as conn:
            identities.bind_certificate(conn, site.b, Role.CONTROLLER, issued.sha256)
        now = dt.datetime.now(dt.UTC)
        expired = site.ca.issue_client(site.a, days=1, now=now - dt.timedelta(days=10))
        os.replace(expired.cert, tmp / "pki" / "expired.pem")
        os.replace(expired.key, tmp / "pki" / "expired.key")
        foreign = LocalCA(tmp / "foreign")
        foreign.init(name="someone else's CA")
        foreign.issue_client(site.a)
        return site

    @property
    def a(self) -> str:  # the attacker: a real, registered controller
        return self.controllers[0]

    @property
    def b(self) -> str:  # the victim
        return self.controllers[1]

    @property
    def r(self) -> str:  # gets revoked
        return self.controllers[2]

    @property
    def s(self) -> str:  # goes silent
        return self.controllers[3]

    def env(self) -> dict[str, str]:
        assert self.ca is not None
        return {
            "CHARGELINE_DATABASE_URL": self.database,
            "CHARGELINE_BROKER_CERT_FILE": str(self.ca.dir / "server.pem"),
            "CHARGELINE_BROKER_KEY_FILE": str(self.ca.dir / "server.key"),
            "CHARGELINE_BROKER_CLIENT_CA_FILE": str(self.ca.cert_path),
            "CHARGELINE_BROKER_MAX_PACKET_BYTES": str(MAX_PACKET),
        }


class BrokerUnderTest:
    kind = ""

    def __init__(self, site: Site, tmp: Path, settings: dict[str, str] | None = None) -> None:
        self.site, self.tmp = site, tmp
        self.settings = settings or {}  # CHARGELINE_… variables of this broker
        self.ports = {"tcp": free_port(), "tls": free_port(), "mtls": free_port()}

    def env(self) -> dict[str, str]:
        return {
            **self.site.env(),
            "CHARGELINE_DATA_DIR": str(self.tmp / "data"),
            "CHARGELINE_BROKER_BIND": f"127.0.0.1:{self.ports['tcp']}",
            "CHARGELINE_BROKER_TLS_BIND": f"127.0.0.1:{self.ports['tls']}",
            "CHARGELINE_BROKER_MTLS_BIND": f"127.0.0.1:{self.ports['mtls']}",
            **self.settings,
        }

    def start(self) -> None:
        raise NotImplementedError

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        raise NotImplementedError

    def reload(self) -> None:
        """Make the broker see changed identities (a no-op where that is automatic)."""

    def wait_saved(self, since: float) -> None:
        """Wait until the broker has written what it acknowledged since ``since``
        (``time.time()``): brokers acknowledge before they persist."""

    def restart(self, sig: signal.Signals) -> None:
        self.stop(sig)
        self.start()

    def wait_listening(self) -> None:
        for port in self.ports.values():
            wait_port(port, timeout=30)

    # --- clients --------------------------------------------------------------------------
    def url(
        self, listener: str = "tcp", *, user: str | None = None, password: str | None = None
    ) -> str:
        scheme = "mqtt" if listener == "tcp" else "mqtts"
        auth = f"{user}:{password}@" if user and password else (f"{user}@" if user else "")
        return f"{scheme}://{auth}127.0.0.1:{self.ports[listener]}"

    @asynccontextmanager
    async def client(
        self,
        name: str | None,
        *,
        listener: str = "tcp",
        password: str | None = None,
        client_id: str | None = None,
        cert: tuple[Path, Path] | None = None,
        **options: object,
    ) -> AsyncIterator[aiomqtt.Client]:
        """A connected client as ``name`` (its own password unless one is given)."""
        assert self.site.ca is not None
        if password is None and name is not None and listener != "mtls":
            password = self.site.passwords[name]
        url = MqttUrl(
            self.url(listener, user=name, password=password),
            ca_file=self.site.ca.cert_path,
            cert_file=cert[0] if cert else None,
            key_file=cert[1] if cert else None,
        )
        async with mqtt.client(url, identifier=client_id or name or "", **options) as c:
            yield c


class Amqtt(BrokerUnderTest):
    kind = "amqtt"

    def start(self) -> None:
        self.proc = Proc(f"broker-{self.ports['tcp']}", ["broker"], self.env(), self.tmp)
        Proc.registry.remove(self.proc)  # outlives the test that (re)started it
        self.proc.start()
        self.wait_listening()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if sig is signal.SIGKILL:
            self.proc.kill()
        else:
            self.proc.stop()

    def wait_saved(self, since: float) -> None:
        time.sleep(0.3)  # RetainedStore writes each change at once, on its own thread


class Mosquitto(BrokerUnderTest):
    kind = "mosquitto"

    def export(self) -> None:
        export = Proc(
            "export",
            # root: the test's temporary directories are private to root
            [
                "broker",
                "export",
                "mosquitto",
                "--out",
                str(self.tmp / "mosquitto"),
                "--user",
                "root",
            ],
            self.env(),
            self.tmp,
        ).start()
        assert export.wait(60) == 0, export.log()

    def start(self) -> None:
        self.export()
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        conf = self.tmp / "mosquitto" / "mosquitto.conf"
        self.log = (self.tmp / "mosquitto.log").open("ab")
        self.popen = subprocess.Popen([exe, "-c", str(conf)], stdout=self.log, stderr=self.log)
        self.wait_listening()

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        self.popen.send_signal(sig)
        self.popen.wait(15)

    def reload(self) -> None:
        self.export()
        self.popen.send_signal(signal.SIGHUP)
        time.sleep(0.5)

    def wait_saved(self, since: float) -> None:
        # Mosquitto saves its whole store every autosave_interval (1 s, counted in whole
        # seconds, so 1-2 s apart): wait for a save that began after ``since``.
        store = self.tmp / "mosquitto" / "data" / "mosquitto.db"
        deadline = time.monotonic() + 10
        while not (store.exists() and store.stat().st_mtime > since + 0.01):
            assert time.monotonic() < deadline, "Mosquitto did not save its store"
            time.sleep(0.1)


def brokers(site: Site, tmp: Path, kind: str) -> Iterator[BrokerUnderTest]:
    broker: BrokerUnderTest = Amqtt(site, tmp) if kind == "amqtt" else Mosquitto(site, tmp)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


# --- raw connections ------------------------------------------------------------------


def raw_connect(port: int, packet: bytes, *, timeout: float = 5) -> tuple[socket.socket, bytes]:
    """Send ``packet`` on a new connection; return the socket and the CONNACK (or b"")."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(packet)
    try:
        return sock, sock.recv(4)
    except (TimeoutError, ConnectionResetError):
        return sock, b""


def tls_connack(port: int, ca: Path, cert: tuple[Path, Path] | None, packet: bytes) -> bytes:
    """TLS handshake (with ``cert`` as client certificate), then ``packet``: the CONNACK,
    or b"" when the server ends the connection instead (TLS 1.3 reports a refused client
    certificate only after the handshake)."""
    context = ssl.create_default_context(cafile=ca)
    if cert is not None:
        context.load_cert_chain(*cert)
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(packet)
            return sock.recv(4)
    except (ssl.SSLError, OSError):
        return b""

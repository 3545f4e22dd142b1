"""systemd's service protocol: READY=1 once a process serves, WATCHDOG=1 while its event
loop turns, STOPPING=1 on the way out (the units in deploy/systemd/ are Type=notify with
WatchdogSec=). A test socket plays systemd's notify socket."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kernel import systemd
from tests.procs import Proc, free_port
from tests.test_auth import auth_env


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    yield sock, path
    sock.close()


def receive(sock: socket.socket, until: str) -> list[str]:
    """Messages up to and including the first that is ``until``."""
    seen: list[str] = []
    while not seen or seen[-1] != until:
        seen.append(sock.recv(4096).decode())
    return seen


@pytest.mark.processes
def test_a_process_says_ready_feeds_the_watchdog_and_says_it_stops(
    notify_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, path = notify_socket
    port = free_port()
    env = {
        "NOTIFY_SOCKET": path,
        "WATCHDOG_USEC": "400000",  # 0.4 s: a beat every 0.2 s
        "CHARGELINE_DATA_DIR": str(tmp_path / "data"),
        "CHARGELINE_BROKER_ALLOW_ANONYMOUS": "true",
    }
    broker = Proc("broker", ["broker", "--bind", f"127.0.0.1:{port}"], env, tmp_path).start()
    try:
        assert receive(sock, "READY=1")[-1] == "READY=1"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # ready means serving
        beats = [sock.recv(4096).decode() for _ in range(3)]
        assert beats == ["WATCHDOG=1"] * 3
    finally:
        broker.stop()
    assert "STOPPING=1" in receive(sock, "STOPPING=1")


@pytest.mark.processes
def test_an_http_server_is_ready_only_once_it_listens(
    notify_socket: tuple[socket.socket, str], database: str, tmp_path: Path
) -> None:
    sock, path = notify_socket
    port = free_port()
    env = {"NOTIFY_SOCKET": path, **auth_env(database, tmp_path, port)}
    auth = Proc("auth", ["auth"], env, tmp_path).start()
    try:
        assert receive(sock, "READY=1")[-1] == "READY=1"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        auth.stop()
    assert "STOPPING=1" in receive(sock, "STOPPING=1")


@pytest.mark.pure
def test_outside_systemd_nothing_is_sent_and_a_watchdog_for_another_pid_is_not_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    assert systemd.watchdog_period_s() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert systemd.watchdog_period_s() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    monkeypatch.setenv("WATCHDOG_USEC", "nonsense")
    assert systemd.watchdog_period_s() is None


@pytest.mark.pure
def test_an_abstract_notify_socket_is_reached(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"chargeline-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("STATUS=testing") is True
        assert sock.recv(100) == b"STATUS=testing"

"""Slow and greedy HTTP clients against the authorization server (finding 12 of the
security review): it runs with a distribution's 1,024 open files, as the reviewer found
it, and must keep serving a partner while a stranger holds or trickles connections."""

from __future__ import annotations

import contextlib
import functools
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from cloud_gateway.clients import NewClient, add_client
from tests.mqtt_wire import connect_from
from tests.procs import free_port, wait_for, wait_port

pytestmark = pytest.mark.processes

PER_ADDRESS = 100
TIMEOUT_S = 2


@pytest.fixture
def server(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, NewClient, int]]:
    """The authorization server, started with the open-file limits (soft, hard) given as
    the fixture's parameter: by default a distribution's 1,024 with no room to raise."""
    limits = getattr(request, "param", (1024, 1024))
    port = free_port()
    client = add_client(database, "WeCharge", ["charges:read"])
    env = {
        "CHARGELINE_DATABASE_URL": database,
        "CHARGELINE_DATA_DIR": str(tmp_path / "data"),
        "CHARGELINE_AUTH_BIND": f"127.0.0.1:{port}",
        "CHARGELINE_ISSUER": f"http://127.0.0.1:{port}",
        "CHARGELINE_HTTP_REQUEST_TIMEOUT_S": str(TIMEOUT_S),
        "CHARGELINE_HTTP_MAX_CONNECTIONS_PER_ADDRESS": str(PER_ADDRESS),
        "PATH": "/usr/bin:/bin",
    }
    log = (tmp_path / "auth.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "chargeline", "auth"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        # set before exec, nothing else runs
        preexec_fn=functools.partial(resource.setrlimit, resource.RLIMIT_NOFILE, limits),  # noqa: PLW1509
    )
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}", client, proc.pid
    finally:
        proc.terminate()
        proc.wait(15)


def _token(url: str, client: NewClient) -> float:
    started = time.monotonic()
    answer = httpx2.post(
        f"{url}/oauth2/token",
        data={"grant_type": "client_credentials"},
        auth=(client.client_id, client.client_secret),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return time.monotonic() - started


def test_half_sent_requests_neither_lock_out_nor_stay(
    server: tuple[str, NewClient, int],
) -> None:
    """1,100 connections from one stranger, each sending half a request (more than the
    server's 1,024 open files): those over the per-address cap get 503 at once, the rest
    are cut off with 408 at the request deadline, one trickling a byte a second too; a
    partner gets tokens throughout."""
    url, client, _ = server
    port = int(url.rsplit(":", 1)[1])
    half = (
        b"POST /oauth2/token HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n\r\ngrant"
    )
    held: list[socket.socket] = []
    try:
        for _ in range(1_100):
            sock = connect_from("127.0.0.2", port, timeout=TIMEOUT_S + 10)
            with contextlib.suppress(OSError):
                sock.sendall(half)
            held.append(sock)
        trickler = connect_from("127.0.0.3", port, timeout=TIMEOUT_S + 10)
        took = [_token(url, client) for _ in range(3)]
        started = time.monotonic()
        for byte in b"GET / HTTP/1.1\r\nHost: x\r\n":
            try:
                trickler.sendall(bytes([byte]))
            except OSError:
                break
            time.sleep(0.5)
            if time.monotonic() - started > TIMEOUT_S + 5:
                break
        assert trickler.recv(64).startswith(b"HTTP/1.1 408")
        # Each held connection was answered: over the cap with 503 at once, under it with
        # 408 at the deadline (which ones depends on how fast they were opened).
        answers = [sock.recv(64)[:12] for sock in held]
        assert set(answers) <= {b"HTTP/1.1 503", b"HTTP/1.1 408"}, set(answers)
        assert answers.count(b"HTTP/1.1 503") > 0, "no connection was over the cap"
        assert answers[0] == b"HTTP/1.1 408"
        took.append(_token(url, client))
    finally:
        for sock in held:
            sock.close()
    assert max(took) < 2.0, took


@pytest.mark.parametrize("server", [(1024, 4096)], indirect=True)
def test_the_servers_raise_their_file_limit_to_the_hard_limit(
    server: tuple[str, NewClient, int],
) -> None:
    """Started with a soft limit of 1,024 under a hard one of 4,096 (a distribution's
    shape), the server raises its own soft limit to 4,096 and serves. (Its connection cap
    stays below whatever limit it has: tests/test_limits_unit.py.)"""
    url, client, pid = server
    limits = Path(f"/proc/{pid}/limits").read_text()
    open_files = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    assert open_files.split()[3:5] == ["4096", "4096"]
    wait_for(lambda: _token(url, client) < 5, timeout=10, what="a token")

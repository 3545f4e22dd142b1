"""Real processes and a real network for the tests: spawning chargeline, a cuttable TCP link."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psycopg
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time process ``pid`` has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+).

    A port the kernel hands out for ``bind(0)`` is ephemeral: any outgoing connection
    (to PostgreSQL, to the broker) may take it before our server binds it.
    """
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000..32000")


def wait_for(check: Callable[[], Any], *, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def wait_port(port: int, timeout: float = 30, proc: Proc | None = None) -> None:
    """Wait until something listens on ``port``; fail at once if ``proc`` has exited."""

    def is_open() -> bool:
        if proc is not None and proc.popen is not None and proc.popen.poll() is not None:
            raise AssertionError(
                f"{proc.name} exited with {proc.popen.returncode} before listening on "
                f"port {port}:\n{proc.log()[-3000:]}"
            )
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(is_open, timeout=timeout, what=f"port {port} to listen")


class Proc:
    """A chargeline subprocess whose output goes to a log file shown when a test fails."""

    registry: ClassVar[list[Proc]] = []

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.args = args
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"{name}.log"
        self.popen: subprocess.Popen[bytes] | None = None
        Proc.registry.append(self)

    def start(self) -> Proc:
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "chargeline", *self.args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def pause(self) -> None:
        """SIGSTOP: a hung process; its connections stay open and say nothing."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        if self.running():
            assert self.popen is not None
            self.popen.kill()
            self.popen.wait()

    def stop(self, timeout: float = 15) -> int | None:
        """SIGTERM and wait; SIGKILL if it does not go."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode

    def wait(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class NetCut:
    """A TCP relay between a client and a server that the test can cut and restore.

    It stands in for the one thing a test cannot have: a network cable to pull.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.listener.setblocking(False)
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.up = True
        self._stop = False
        self._lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def cut(self) -> None:
        with self._lock:
            self.up = False
            for a, b in self.pairs:
                for s in (a, b):
                    with contextlib.suppress(OSError):
                        s.close()
            self.pairs.clear()

    def restore(self) -> None:
        with self._lock:
            self.up = True

    def close(self) -> None:
        self._stop = True
        self.cut()
        self.thread.join(5)
        self.listener.close()

    def _run(self) -> None:
        while not self._stop:
            with self._lock:
                self._accept()
                sockets = [s for pair in self.pairs for s in pair]
            if not sockets:
                time.sleep(0.01)
                continue
            sel = selectors.DefaultSelector()
            for s in sockets:
                with contextlib.suppress(ValueError, OSError):
                    sel.register(s, selectors.EVENT_READ)
            events = sel.select(0.01)
            with self._lock:
                for key, _ in events:
                    self._relay(key.fileobj)  # type: ignore[arg-type]
            sel.close()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        if not self.up:
            conn.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=2)
        except OSError:
            conn.close()
            return
        for s in (conn, upstream):
            s.setblocking(True)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pairs.append((conn, upstream))

    def _relay(self, source: socket.socket) -> None:
        for pair in self.pairs:
            if source in pair:
                other = pair[1] if source is pair[0] else pair[0]
                try:
                    data = source.recv(65536)
                    if not data:
                        raise OSError("closed")
                    other.sendall(data)
                except OSError:
                    for s in pair:
                        with contextlib.suppress(OSError):
                            s.close()
                    self.pairs.remove(pair)
                return


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(sql, params or None).fetchall()  # type: ignore[arg-type]


@contextlib.contextmanager
def dumped_logs_on_failure() -> Iterator[None]:
    try:
        yield
    except BaseException:
        for proc in Proc.registry:
            print(f"----- {proc.name} ({proc.log_path}) -----\n{proc.log()[-6000:]}")
        raise


@dataclass
class Receiver:
    """A partner's webhook endpoint: answers ``status``; records what it accepted."""

    port: int = field(default_factory=free_port)
    status: int = 200
    accepted: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    #: ``time.monotonic()`` when each accepted webhook arrived (benchmarks time them).
    arrived: list[float] = field(default_factory=list)
    refused: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def start(self) -> None:
        async def hook(request: Request) -> Response:
            body = await request.body()
            if self.status >= 300:
                self.refused += 1
            else:
                self.accepted.append((dict(request.headers), body))
                self.arrived.append(time.monotonic())
            return Response(status_code=self.status)

        app = Starlette(routes=[Route("/hooks", hook, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_port(self.port)

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(10)
            self._server = None

    def bodies(self) -> list[dict[str, object]]:
        import json

        return [json.loads(body) for _, body in self.accepted]


# --- a raw MQTT 3.1.1 client, for what well-behaved libraries will not send -------------


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 60,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    flags = 0x02  # clean session
    payload = _string(client_id)
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retain
        payload += _string(will[0]) + _string(will[1])
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return b"\x10" + _remaining(len(body)) + body


def subscribe_packet(packet_id: int, filters: list[str], qos: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_string(f) + bytes([qos]) for f in filters)
    return b"\x82" + _remaining(len(body)) + body


def publish_packet(packet_id: int, topic: str, payload: bytes, qos: int = 1) -> bytes:
    """A PUBLISH at QoS 1 (or 2: which the wire contract never uses)."""
    body = _string(topic) + struct.pack("!H", packet_id) + payload
    return bytes([0x30 | qos << 1]) + _remaining(len(body)) + body


def connect_from(address: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from another loopback ``address`` (Linux
    routes all of 127/8 to this machine), as a stranger on the network would open it."""
    sock = socket.socket()
    sock.bind((address, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


#: DISCONNECT: the client is leaving on purpose (no will).
DISCONNECT_PACKET = b"\xe0\x00"


async def drain(client: Any, seconds: float) -> list[tuple[str, bytes]]:
    """Every (topic, payload) an aiomqtt client receives within ``seconds``."""
    got: list[tuple[str, bytes]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append((message.topic.value, message.payload))
    return got

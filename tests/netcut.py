"""A cuttable TCP link between a client and a server, for outage tests."""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time


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

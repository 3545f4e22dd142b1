"""systemd's service protocol (``sd_notify(3)``), spoken directly: ``READY=1`` once a
process serves, ``WATCHDOG=1`` while its event loop turns, ``STOPPING=1`` on the way out.

The units in ``deploy/systemd/`` are ``Type=notify`` with ``WatchdogSec=``: systemd
starts what depends on a process only once it is ready, and restarts a process whose
event loop has stopped turning (a hang that a crash-only ``Restart=`` never sees). The
watchdog is fed from the event loop itself, so a loop blocked for longer than half the
watchdog period misses a beat.

Outside systemd (no ``NOTIFY_SOCKET``) everything here does nothing. The protocol is one
datagram per message on a Unix socket; libsystemd is not needed for that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send ``message`` (``READY=1``, ``WATCHDOG=1``, …) to systemd; False outside it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd (%s): %s", message, exc)
        return False
    return True


def watchdog_period_s() -> float | None:
    """The watchdog period systemd asked for (``WATCHDOG_USEC``), if it is for this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        period = int(usec) / 1e6
    except ValueError:
        return None
    return period if period > 0 else None


async def _feed(period_s: float) -> None:
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(period_s / 2)


async def announce(ready: Callable[[], Awaitable[None]] | None = None) -> None:
    """For a task that lives as long as the service: ``READY=1`` once ``ready()`` returns
    (at once without it), then the watchdog fed until cancelled, and ``STOPPING=1``."""
    if not os.environ.get("NOTIFY_SOCKET"):
        return  # not under systemd: nothing to announce
    try:
        if ready is not None:
            try:
                await ready()
            except Exception as exc:  # no READY: systemd's start time-out says the rest
                log.error("not ready, so not announced to systemd: %s", exc)
                return
        notify("READY=1")
        period = watchdog_period_s()
        if period:
            await _feed(period)
        else:
            await asyncio.Event().wait()
    finally:
        notify("STOPPING=1")


@contextlib.asynccontextmanager
async def service(ready: Callable[[], Awaitable[None]] | None = None) -> AsyncIterator[None]:
    """``announce`` while the block runs."""
    task = asyncio.create_task(announce(ready), name="systemd")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def listening(bind: str, timeout_s: float = 30.0) -> None:
    """Wait until something accepts connections on ``bind`` (host:port): for servers
    whose sockets open after the code that knows it is starting."""
    host, _, port = bind.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    async with asyncio.timeout(timeout_s):
        while True:
            try:
                _, writer = await asyncio.open_connection(host, int(port))
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return

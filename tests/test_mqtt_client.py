"""chargeline's aiomqtt client (kernel/mqtt.py), without a broker."""

from __future__ import annotations

import asyncio

import pytest

from kernel import mqtt
from kernel.settings import MqttUrl

pytestmark = pytest.mark.pure


def test_a_cancel_that_meets_the_awaited_result_still_cancels() -> None:
    """aiomqtt waits (for PUBACKs, SUBACKs) with asyncio.wait_for, which on Python 3.11
    returns the result and drops a cancel arriving in the same instant (CPython gh-86296):
    CI saw the demo's edge agents run on for ten minutes after Ctrl-C. Ours lets it through."""

    async def scenario() -> str:
        client = mqtt.client(MqttUrl("mqtt://127.0.0.1:1"), identifier="t")  # never connects
        ready = asyncio.Event()

        async def wait() -> str:
            await client._wait_for(ready.wait(), timeout=5)
            return "ran on after its cancel"

        task = asyncio.create_task(wait())
        await asyncio.sleep(0.01)
        ready.set()
        task.cancel()  # in the same instant as the result
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"

    assert asyncio.run(scenario()) == "cancelled"

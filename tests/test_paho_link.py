"""The ingest's MQTT link against the real amqtt broker: bursts, backpressure, reconnects."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest

from ingest.paho_link import READ_CHUNK, PahoLink
from kernel import mqtt
from kernel.settings import MqttUrl
from tests.conftest import Broker
from tests.netcut import NetCut

pytestmark = pytest.mark.processes


def _root() -> str:
    return f"link{uuid.uuid4().hex[:8]}"


async def _eventually(check: Callable[[], bool], what: str, within: float = 15) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _with_link(
    url: str, root: str, body: Callable[[PahoLink, list[tuple[str, bytes]]], Awaitable[None]]
) -> None:
    received: list[tuple[str, bytes]] = []
    connected = asyncio.Event()
    link = PahoLink(
        MqttUrl(url),
        client_id=f"test-{root}",
        subscriptions=[(f"{root}/#", 1)],
        on_message=lambda topic, payload: received.append((topic, payload)),
    )
    task = asyncio.create_task(link.run(on_connected=connected.set))
    try:
        await asyncio.wait_for(connected.wait(), 15)
        await body(link, received)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _publish(url: str, messages: list[tuple[str, bytes]]) -> None:
    async with mqtt.client(MqttUrl(url), identifier=f"pub-{uuid.uuid4().hex[:8]}") as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1)


def test_a_burst_arrives_complete_in_order_with_payloads_intact(broker: Broker) -> None:
    root = _root()
    # Small messages that share one read, and a few larger than the read buffer.
    sent = [(f"{root}/m/{i}", bytes([i % 256]) * (1 + i % 300)) for i in range(1500)]
    sent += [(f"{root}/big/{i}", bytes(range(256)) * (READ_CHUNK // 256 * 3 + i)) for i in range(3)]

    async def body(link: PahoLink, received: list[tuple[str, bytes]]) -> None:
        await _publish(broker.url, sent)
        await _eventually(lambda: len(received) >= len(sent), f"{len(sent)} messages")
        await asyncio.sleep(0.2)  # nothing extra may follow
        assert received == sent

    asyncio.run(_with_link(broker.url, root, body))


def test_paused_reading_delivers_nothing_until_resumed_and_loses_nothing(broker: Broker) -> None:
    root = _root()
    sent = [(f"{root}/m/{i}", str(i).encode()) for i in range(200)]

    async def body(link: PahoLink, received: list[tuple[str, bytes]]) -> None:
        original = link.on_message

        def pause_after_ten(topic: str, payload: bytes) -> None:
            original(topic, payload)
            if len(received) == 10:
                link.pause_reading()

        link.on_message = pause_after_ten
        await _publish(broker.url, sent)
        await _eventually(lambda: len(received) >= 10, "the first ten messages")
        await asyncio.sleep(0.5)
        assert len(received) == 10, "messages arrived while reading was paused"
        link.resume_reading()
        await _eventually(lambda: len(received) >= len(sent), "the rest after resuming")
        assert received == sent

    asyncio.run(_with_link(broker.url, root, body))


def test_reconnects_resubscribes_and_publishes_after_the_network_drops(broker: Broker) -> None:
    root = _root()
    relay = NetCut(broker.port)
    connections = 0
    received: list[tuple[str, bytes]] = []

    def on_connected() -> None:
        nonlocal connections
        connections += 1

    async def scenario() -> None:
        link = PahoLink(
            MqttUrl(f"mqtt://127.0.0.1:{relay.port}"),
            client_id=f"test-{root}",
            subscriptions=[(f"{root}/in/#", 1)],
            on_message=lambda topic, payload: received.append((topic, payload)),
            keepalive=5,
        )
        task = asyncio.create_task(link.run(on_connected=on_connected))
        try:
            await _eventually(lambda: connections == 1, "the first connection")
            await _publish(broker.url, [(f"{root}/in/1", b"before")])
            await _eventually(lambda: len(received) == 1, "a message before the cut")

            relay.cut()
            await _eventually(lambda: not link.connected, "the link to notice the cut")
            assert not link.publish(f"{root}/out", b"while down"), "publish claimed success"
            relay.restore()
            await _eventually(lambda: connections == 2, "a reconnect")

            async with mqtt.client(MqttUrl(broker.url), identifier=f"sub-{root}") as sub:
                await sub.subscribe(f"{root}/out", qos=1)
                await _publish(broker.url, [(f"{root}/in/2", b"after")])
                assert link.publish(f"{root}/out", b"from the link")
                message = await asyncio.wait_for(anext(aiter(sub.messages)), 10)
                assert message.payload == b"from the link"
            await _eventually(lambda: len(received) == 2, "a message after the reconnect")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    try:
        asyncio.run(scenario())
    finally:
        relay.close()
    assert received == [(f"{root}/in/1", b"before"), (f"{root}/in/2", b"after")]


def test_an_unreachable_broker_is_retried_not_fatal() -> None:
    async def scenario() -> bool:
        link = PahoLink(
            MqttUrl("mqtt://127.0.0.1:1"), client_id="nobody", subscriptions=[], on_message=print
        )
        task = asyncio.create_task(link.run())
        await asyncio.sleep(1.0)
        still_trying = not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return still_trying

    assert asyncio.run(scenario())

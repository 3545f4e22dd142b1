"""The embedded broker's own behaviour, against the real process."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from kernel import mqtt
from kernel.settings import MqttUrl
from tests.brokers import raw_connect
from tests.conftest import Broker
from tests.mqtt_wire import DISCONNECT_PACKET, connect_packet, drain, publish_packet

pytestmark = pytest.mark.processes


def test_a_client_gets_retained_messages_only_for_its_own_subscriptions(broker: Broker) -> None:
    """amqtt 0.12.1 sent a connecting client every retained message that *any* client's
    subscription matched: one controller would see another's desired state."""
    mine, theirs = f"a{uuid.uuid4().hex[:8]}", f"b{uuid.uuid4().hex[:8]}"
    url = MqttUrl(broker.url)

    async def scenario() -> list[tuple[str, bytes]]:
        async with mqtt.client(url, identifier=f"owner-{theirs}") as owner:
            await owner.subscribe(f"{theirs}/#", qos=1)
            await owner.publish(f"{theirs}/desired/1", b"\x01secret", qos=1, retain=True)
            await owner.publish(f"{mine}/desired/1", b"\x02mine", qos=1, retain=True)
            async with mqtt.client(url, identifier=f"other-{mine}") as other:
                await other.subscribe(f"{mine}/#", qos=1)
                return await drain(other, 1.5)

    assert asyncio.run(scenario()) == [(f"{mine}/desired/1", b"\x02mine")]


def test_a_burst_acknowledged_just_before_a_disconnect_is_delivered_whole(broker: Broker) -> None:
    """amqtt 0.12.1 acknowledges a QoS 1 message on receipt, queues it, and broadcasts one
    per turn of the client's loop; when the client disconnected, what was still queued was
    dropped. It shows whenever reading runs ahead of broadcasting: an edge flushing its
    buffer and then disconnecting lost the tail of it (the edge resends it only when no
    ``meter/ack`` comes, a minute later)."""
    root = f"burst{uuid.uuid4().hex[:8]}"
    count = 2000
    url = MqttUrl(broker.url)

    def publish_burst_then_disconnect() -> int:
        """Send the burst and a DISCONNECT in one write; count the PUBACKs that come back."""
        sock, _ = raw_connect(broker.port, connect_packet(f"pub-{root}"))
        with sock:
            burst = b"".join(
                publish_packet(i, f"{root}/meter", i.to_bytes(2, "big"))
                for i in range(1, count + 1)
            )
            sock.sendall(burst + DISCONNECT_PACKET)
            acked = 0
            while chunk := sock.recv(65536):  # a PUBACK is four bytes
                acked += len(chunk) // 4
        return acked

    async def scenario() -> tuple[int, list[tuple[str, bytes]]]:
        async with mqtt.client(url, identifier=f"sub-{root}") as subscriber:
            await subscriber.subscribe(f"{root}/#", qos=1)
            acked = await asyncio.to_thread(publish_burst_then_disconnect)
            return acked, await drain(subscriber, 3.0)

    acked, received = asyncio.run(scenario())
    assert acked == count
    numbers = [int.from_bytes(payload, "big") for _, payload in received]
    assert numbers == list(range(1, count + 1)), f"{len(numbers)} of {count} delivered"


def test_the_broadcast_queue_lets_commands_pass_a_flood_of_meter_batches() -> None:
    """What the broker routes waits in one queue; minute batches (a fleet's flood) wait
    behind everything else, so a desired state does not queue behind thousands of them.
    Each topic keeps its order (MQTT's rule), and nothing is dropped."""
    from broker.delivery import BroadcastLanes

    async def go() -> list[str]:
        lanes = BroadcastLanes()
        for n in range(3):
            await lanes.put({"topic": f"cl/v1/ctl/c{n}/meter", "data": b"%d" % n})
        lanes.put_nowait({"topic": "cl/v1/ctl/c1/outlet/1/desired", "data": b"off"})
        lanes.put_nowait({"topic": "cl/v1/ctl/c1/ack", "data": b"ack"})
        await lanes.put({"topic": "cl/v1/ctl/c0/meter", "data": b"3"})
        assert lanes.qsize() == 6
        taken = [(await lanes.get())["data"].decode() for _ in range(6)]
        assert lanes.empty()
        waiting = asyncio.ensure_future(lanes.get())  # an empty queue waits for the next
        await asyncio.sleep(0)
        assert not waiting.done()
        lanes.put_nowait({"topic": "cl/v1/ctl/c2/meter", "data": b"4"})
        assert (await waiting)["data"] == b"4"
        return taken

    assert asyncio.run(go()) == ["off", "ack", "0", "1", "2", "3"]

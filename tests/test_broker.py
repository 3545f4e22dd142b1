"""The embedded broker's own behaviour, against the real process."""

from __future__ import annotations

import asyncio
import uuid

from chargeline import mqtt
from chargeline.settings import MqttUrl
from tests.conftest import Broker
from tests.helpers import drain


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

"""The fleet's breakers for benchmarks: answers every desired state at once, as an edge
that switched would (``applied``), for controllers that have no edge agent running.

``python -m bench.acker URL ROOT``: subscribes to every controller's desired states,
prints ``ready``, and publishes a ``CommandAck`` for each one received (retained states
included) until stdin closes.
"""

from __future__ import annotations

import asyncio
import sys
import time

from kernel import mqtt
from kernel.settings import MqttUrl
from schemas.codec import decode, encode
from schemas.messages import CommandAck, CommandOutcome, DesiredState
from schemas.topics import TopicKind, Topics


async def main() -> None:
    url, root = sys.argv[1], sys.argv[2]
    topics = Topics(root)
    async with mqtt.client(MqttUrl(url), identifier="bench-acker") as client:
        await client.subscribe(topics.all_controllers(TopicKind.DESIRED), qos=1)
        print("ready", flush=True)
        async for message in client.messages:
            want = decode(DesiredState, bytes(message.payload))  # type: ignore[arg-type]
            ack = CommandAck(
                controller_id=want.controller_id,
                outlet=want.outlet,
                generation=want.generation,
                outcome=CommandOutcome.APPLIED,
                breaker_on=want.on,
                at=time.time(),
            )
            await client.publish(topics.ack(want.controller_id), encode(ack), qos=1)


if __name__ == "__main__":
    asyncio.run(main())

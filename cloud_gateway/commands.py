"""Turning a decision about an outlet into a retained, versioned desired state.

The command is recorded first, in the caller's transaction (``charging.commands``: the
outlet's next generation and the audit row), then ``publish`` sends the ``DesiredState``
retained with QoS 1 after the commit.

``AckWaiter`` lets an API call wait a short time for the edge's answer: it subscribes to
the acknowledgements and resolves the future registered for (controller, outlet,
generation). Ingest records the same acknowledgements durably; this is only the fast path.
"""

from __future__ import annotations

import asyncio
import logging

import aiomqtt

from schemas.codec import CodecError, decode, encode
from schemas.messages import CommandAck, DesiredState
from schemas.topics import TopicKind, Topics

log = logging.getLogger(__name__)


async def publish(client: aiomqtt.Client, topics: Topics, want: DesiredState) -> None:
    """Publish after the commit: retained, QoS 1 (the broker acknowledges receipt)."""
    await client.publish(
        topics.desired(want.controller_id, want.outlet), encode(want), qos=1, retain=True
    )


class AckWaiter:
    """Futures for command acknowledgements, fed by an MQTT subscription to ``ack`` topics."""

    def __init__(self, topics: Topics) -> None:
        self.topics = topics
        self._waiting: dict[tuple[str, int, int], asyncio.Future[CommandAck]] = {}

    @property
    def subscription(self) -> str:
        return self.topics.all_controllers(TopicKind.ACK)

    def expect(
        self, controller_id: str, outlet: int, generation: int
    ) -> asyncio.Future[CommandAck]:
        """Register before publishing, so an instant answer is not missed."""
        key = (controller_id, outlet, generation)
        future = self._waiting.get(key)
        if future is None:
            future = self._waiting[key] = asyncio.get_running_loop().create_future()
        return future

    def forget(self, controller_id: str, outlet: int, generation: int) -> None:
        self._waiting.pop((controller_id, outlet, generation), None)

    def deliver(self, topic: str, payload: bytes) -> None:
        parsed = self.topics.parse(topic)
        if parsed is None or parsed.kind is not TopicKind.ACK:
            return
        try:
            ack = decode(CommandAck, payload)
        except CodecError as exc:
            log.warning("bad command ack on %s: %s", topic, exc)  # ingest keeps it as a dead letter
            return
        if ack.controller_id != parsed.controller_id:
            return
        future = self._waiting.pop((ack.controller_id, ack.outlet, ack.generation), None)
        if future is not None and not future.done():
            future.set_result(ack)

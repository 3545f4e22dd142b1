"""``chargeline broker``: the embedded amqtt broker with chargeline's configuration."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from amqtt.broker import Broker

from chargeline.settings import BrokerSettings

log = logging.getLogger(__name__)


def amqtt_config(settings: BrokerSettings) -> dict[str, Any]:
    return {
        "listeners": {
            "default": {"type": "tcp", "bind": settings.broker_bind, "max_connections": -1},
        },
        "plugins": {
            # Open to any client for now: authentication and ACLs come with the broker issue.
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            "broker.retained.RetainedStore": {
                "path": str(settings.data_dir / "broker" / "retained.sqlite"),
            },
        },
    }


class ChargelineBroker(Broker):  # type: ignore[misc]
    """amqtt's broker with the fixes chargeline cannot wait for. Keep each one small."""

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        # amqtt 0.12.1 calls this on every CONNECT for every topic filter that *any* client
        # subscribes to, so a connecting client received other clients' retained messages
        # (a controller would get another controller's desired state). Only the session's
        # own subscriptions may deliver retained messages. Belongs in amqtt's connect path.
        topic_filter = subscription[0]
        if any(s is session for s, _ in self._subscriptions.get(topic_filter, ())):
            await super()._publish_retained_messages_for_subscription(subscription, session)


class EmbeddedBroker:
    """``async with EmbeddedBroker(settings): …`` runs the broker for the block's duration."""

    def __init__(self, settings: BrokerSettings) -> None:
        self.settings = settings
        self._broker: Broker | None = None

    async def __aenter__(self) -> EmbeddedBroker:
        self._broker = ChargelineBroker(amqtt_config(self.settings))
        await self._broker.start()
        log.info("broker listening on %s", self.settings.broker_bind)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._broker is not None:
            await self._broker.shutdown()


async def serve(settings: BrokerSettings) -> None:
    async with EmbeddedBroker(settings):
        await asyncio.Event().wait()

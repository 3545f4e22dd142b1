"""The broker's deliveries (part of ``ChargelineBroker``, see ``broker.server``):
subscriptions capped per session and found by lookup, retained messages only on the
contract's retained topics and only for a session's own subscriptions, and each client's
messages broadcast in bursts, all of them, even after it disconnects."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.mqtt.constants import QOS_1, QOS_2
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import ApplicationMessage, Session

from broker.access import IDENTITY, RegistryAccess
from kernel.logsafe import shown

log = logging.getLogger(__name__)

#: Queued messages a client's loop broadcasts per turn: enough to make bursts cheap, few
#: enough that one flooding client does not hold the event loop.
DELIVERIES_PER_TURN = 64

#: Topics whose matching wildcard filters the broker remembers (then it starts over).
MAX_REMEMBERED_TOPICS = 100_000

#: amqtt's SUBACK return code for a refused filter.
SUBSCRIPTION_REFUSED = 0x80


class BroadcastLanes:
    """amqtt's broadcast queue (one for every message the broker routes) in two lanes:
    the controllers' minute batches (``…/meter``), which come in floods, wait behind
    everything else (desired states, acks, events, presence), which is small and waited
    for. Each lane keeps its order, and a topic is always in the same lane, so each topic's
    messages keep theirs (all MQTT asks). Without it a stop's desired state queued behind
    a fleet's batches: its round trip to the breaker and back took up to 80 ms while
    2,500 batches a second went through (bench.stop_under_load).

    The part of ``asyncio.Queue`` amqtt uses."""

    def __init__(self) -> None:
        self._urgent: deque[dict[str, Any]] = deque()
        self._bulk: deque[dict[str, Any]] = deque()
        self._nonempty = asyncio.Event()

    def put_nowait(self, item: dict[str, Any]) -> None:
        topic = item.get("topic")
        bulk = isinstance(topic, str) and topic.endswith("/meter")
        (self._bulk if bulk else self._urgent).append(item)
        self._nonempty.set()

    async def put(self, item: dict[str, Any]) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> dict[str, Any]:
        if self._urgent:
            item = self._urgent.popleft()
        elif self._bulk:
            item = self._bulk.popleft()
        else:
            raise asyncio.QueueEmpty
        if not self._urgent and not self._bulk:
            self._nonempty.clear()
        return item

    async def get(self) -> dict[str, Any]:
        while not self._urgent and not self._bulk:
            await self._nonempty.wait()
        return self.get_nowait()

    def empty(self) -> bool:
        return not self._urgent and not self._bulk

    def qsize(self) -> int:
        return len(self._urgent) + len(self._bulk)


class Delivery(Broker):  # type: ignore[misc]
    """Subscriptions, retained messages and broadcasts."""

    # Set by ChargelineBroker.__init__.
    access: RegistryAccess | None
    max_subscriptions: int
    _subscriptions: Subscriptions
    _filters_changed: int
    _wildcards: list[str]
    _wildcards_version: tuple[int, int] | None
    _wildcard_matches: dict[str, list[str]]

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        # amqtt asks its topic plugins through a new task per plugin for every delivered
        # message; ours decides synchronously (a dictionary lookup once warm).
        # The development broker (``broker_allow_anonymous``) has no topic plugin: open.
        return self.access is None or self.access.decide(session, topic, action)

    async def add_subscription(self, subscription: tuple[str, int], session: Session) -> int:
        # Capped per session: amqtt held any number of filters (20 × 10,000 cost 72 MiB).
        held: set[str] = _held_filters(session)
        if subscription[0] not in held and len(held) >= self.max_subscriptions:
            self.noisy.warning(
                "subscriptions over the cap",
                "%s holds %d topic filters already: refused %s",
                shown(session.client_id),
                len(held),
                shown(subscription[0]),
            )
            return SUBSCRIPTION_REFUSED
        self._filters_changed += 1
        code = int(await super().add_subscription(subscription, session))
        if code != SUBSCRIPTION_REFUSED:
            held.add(subscription[0])
        return code

    def _del_subscription(self, a_filter: str, session: Session) -> int:
        _held_filters(session).discard(a_filter)
        return int(super()._del_subscription(a_filter, session))

    async def _del_all_subscriptions(self, session: Session) -> None:
        self._filters_changed += 1
        await super()._del_all_subscriptions(session)
        _held_filters(session).clear()

    async def retain_message(
        self,
        source_session: Session | None,
        topic_name: str | None,
        data: bytes | bytearray | None,
        qos: int | None = None,
    ) -> None:
        # Only the topics the wire contract retains keep a message (broker/policy.py).
        identity = getattr(source_session, IDENTITY, None)
        if (
            identity is not None
            and self.access is not None
            and topic_name
            and data  # an empty payload clears: always allowed where publishing is
            and not self.access.policy.may_retain(
                name=identity.name, role=identity.role, topic=topic_name
            )
        ):
            self.noisy.warning(
                "retained messages refused",
                "%s may not retain on %s: delivered, not kept",
                identity.name,
                shown(topic_name),
            )
            return
        await super().retain_message(source_session, topic_name, data, qos)

    def _filters_for(self, topic: str) -> list[str]:
        version = (self._filters_changed, len(self._subscriptions))
        if self._wildcards_version != version:
            self._wildcards = [f for f in self._subscriptions if "+" in f or "#" in f]
            self._wildcard_matches.clear()
            self._wildcards_version = version
        # Which wildcard filters match a topic is remembered until the filters change:
        # the same few thousand topics come back every minute.
        matched = self._wildcard_matches.get(topic)
        if matched is None:
            if len(self._wildcard_matches) >= MAX_REMEMBERED_TOPICS:
                self._wildcard_matches.clear()
            matched = [f for f in self._wildcards if self._matches(topic, f)]
            self._wildcard_matches[topic] = matched
        return [*matched, topic] if topic in self._subscriptions else matched

    async def _run_broadcast(self, running_tasks: Any) -> None:
        # amqtt 0.12.1's _run_broadcast with the loop over filters replaced by _filters_for,
        # and its per-message debug formatting dropped.
        broadcast = await self._broadcast_queue.get()
        topic = broadcast["topic"]
        for topic_filter in self._filters_for(topic):
            for target_session, sub_qos in list(self._subscriptions.get(topic_filter, ())):
                qos = broadcast.get("qos", sub_qos)
                if not await self._topic_filtering(target_session, topic, Action.RECEIVE):
                    continue
                connected = target_session.transitions.state == "connected"
                if (
                    not connected
                    and not target_session.clean_session
                    and qos in (QOS_1, QOS_2)
                    and not target_session.is_anonymous
                ):
                    await self._retain_broadcast_message(broadcast, qos, target_session)
                    continue
                if not connected:
                    continue
                handler = self._get_handler(target_session)
                if handler:
                    task = asyncio.ensure_future(
                        handler.mqtt_publish(topic, broadcast["data"], qos, retain=False)
                    )
                    running_tasks.append(task)

    # --- a client's messages: broadcast in bursts, none left behind at a disconnect -----
    async def _client_message_loop(
        self, client_session: Session, handler: BrokerProtocolHandler
    ) -> None:
        # amqtt 0.12.1's loop with two changes. (1) It broadcast one queued message per turn,
        # each behind a new task and an asyncio.wait; now a turn broadcasts what is queued,
        # up to DELIVERIES_PER_TURN. (2) When the client disconnected it returned with
        # messages still queued, which it had already acknowledged (QoS 1 PUBACK): a
        # publisher that sent a burst and disconnected lost the burst's tail. Now what is
        # queued is broadcast before the disconnect is handled (and before any will).
        disconnect_waiter = asyncio.ensure_future(handler.wait_disconnect())
        subscribe_waiter = asyncio.ensure_future(handler.get_next_pending_subscription())
        unsubscribe_waiter = asyncio.ensure_future(handler.get_next_pending_unsubscription())
        wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())

        def waiters() -> list[asyncio.Future[Any]]:
            return [disconnect_waiter, subscribe_waiter, unsubscribe_waiter, wait_deliver]

        try:
            while True:
                done, _ = await asyncio.wait(waiters(), return_when=asyncio.FIRST_COMPLETED)
                if subscribe_waiter in done:
                    await self._handle_subscription(client_session, handler, subscribe_waiter)
                    subscribe_waiter = asyncio.ensure_future(
                        handler.get_next_pending_subscription()
                    )
                if unsubscribe_waiter in done:
                    await self._handle_unsubscription(client_session, handler, unsubscribe_waiter)
                    unsubscribe_waiter = asyncio.ensure_future(
                        handler.get_next_pending_unsubscription()
                    )
                if wait_deliver.done():
                    if not await self._deliver_queued(
                        client_session, handler, wait_deliver.result(), DELIVERIES_PER_TURN
                    ):
                        break  # the client broke the protocol: amqtt closes it
                    wait_deliver = asyncio.ensure_future(handler.mqtt_deliver_next_message())
                if disconnect_waiter in done:
                    queue = client_session.delivered_message_queue
                    if not queue.empty():
                        await self._deliver_queued(
                            client_session, handler, queue.get_nowait(), limit=None
                        )
                    await self._handle_disconnect(client_session, handler, disconnect_waiter)
                    break
        except asyncio.CancelledError:
            log.debug("%s: client loop cancelled", client_session.client_id)
        finally:
            for waiter in waiters():
                waiter.cancel()
            await asyncio.gather(*waiters(), return_exceptions=True)

    async def _deliver_queued(
        self,
        session: Session,
        handler: BrokerProtocolHandler,
        first: ApplicationMessage | None,
        limit: int | None,
    ) -> bool:
        """Broadcast ``first``, then what else the session has queued: up to ``limit``
        messages in all, or everything when ``limit`` is None. False when a message broke
        the protocol (amqtt's rule: the client is closed)."""
        queue = session.delivered_message_queue
        message, delivered = first, 0
        while True:
            received: asyncio.Future[ApplicationMessage | None] = (
                asyncio.get_running_loop().create_future()
            )
            received.set_result(message)
            if not await self._handle_message_delivery(session, handler, received):
                return False
            delivered += 1
            if queue.empty() or (limit is not None and delivered >= limit):
                return True
            message = queue.get_nowait()

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        # Only the session's own subscriptions deliver retained messages (amqtt offered a
        # connecting client other clients' retained messages: another controller's desired
        # state). An exact filter finds its message by lookup; amqtt scanned every retained
        # message, formatting a debug line for each, on every SUBSCRIBE.
        topic_filter, qos = subscription
        if not any(s is session for s, _ in self._subscriptions.get(topic_filter, ())):
            return
        if "+" in topic_filter or "#" in topic_filter:
            # A wildcard delivers only what the session may receive, as a broadcast does
            # (the OCPP bridge subscribes with wildcards and may receive its stations' only).
            found = [
                m
                for t, m in self._retained_messages.items()
                if self._matches(t, topic_filter)
                and await self._topic_filtering(session, t, Action.RECEIVE)
            ]
        else:
            message = self._retained_messages.get(topic_filter)
            found = [message] if message is not None else []
        handler = self._get_handler(session)
        if handler is None or not found:
            return
        await asyncio.wait(
            [
                asyncio.ensure_future(
                    handler.mqtt_publish(m.topic, m.data, min(qos, m.qos or qos), retain=True)
                )
                for m in found
            ]
        )


def _held_filters(session: Session) -> set[str]:
    held: set[str] | None = getattr(session, "chargeline_filters", None)
    if held is None:
        held = set()
        session.chargeline_filters = held
    return held


class Subscriptions(dict[str, list[tuple[Session, int]]]):
    """amqtt's topic filter → subscribers map, with a repr that does not list them all."""

    def __repr__(self) -> str:
        return f"<{len(self)} topic filters>"

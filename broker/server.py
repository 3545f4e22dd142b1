"""``chargeline broker``: the embedded amqtt broker, hardened.

amqtt 0.12.1 has known gaps (FIELD-NOTES.md, and its issues #231, #308, #387, #391). The
fixes below each belong in amqtt itself; they are kept as small overrides of
``ChargelineBroker`` with a comment each, so they can go when amqtt has them:

- authentication happens before the client id is looked up, so a refused client cannot
  take over, or wipe, another client's session;
- a client silent for 1.5 × its keepalive is disconnected and its will published, by one
  watchdog timer per connection instead of a task and timers per packet;
- messages a client has sent are all broadcast, in bursts, even when it disconnects right
  after (amqtt dropped what was still queued, though it had acknowledged it);
- packets larger than ``broker_max_packet_bytes`` close the connection before they are read;
- connections are capped in total and per source address (``kernel.limits``); a
  connection must send its CONNECT within ``broker_connect_timeout_s``, and a connection
  that ends for any reason is closed at once (amqtt left sockets in CLOSE-WAIT);
- QoS 2 publishes close the connection (the wire contract has none; amqtt kept every
  unreleased one in memory), subscriptions per session are capped, and a client may
  retain only on the topics the contract retains;
- what a client controls (client id, username, topic) is cut short and escaped before it
  is logged, and floods of refusals are logged as summaries (``kernel.logsafe``);
- the mTLS listener requires a client certificate (amqtt hard-codes "optional");
- retained messages are delivered only for a session's own subscriptions, by lookup;
- a message finds its subscribers by lookup, not by matching every filter held;
- retained messages persist byte for byte across restarts (``broker/retained.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any

from amqtt.adapters import ReaderAdapter, StreamReaderAdapter, StreamWriterAdapter, WriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import (
    BAD_USERNAME_PASSWORD,
    IDENTIFIER_REJECTED,
    ConnackPacket,
)
from amqtt.mqtt.constants import QOS_0, QOS_1, QOS_2
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.publish import PublishPacket
from amqtt.session import ApplicationMessage, Session
from amqtt.utils import format_client_message, gen_client_id
from transitions import MachineError

from broker.access import IDENTITY, RegistryAccess
from broker.settings import BrokerSettings
from kernel.limits import ConnectionBudget, connection_cap, raise_file_limit
from kernel.logsafe import Summarised, shown

log = logging.getLogger(__name__)

#: A client silent for this many keepalive periods is disconnected (MQTT 3.1.1 §3.1.2.10).
KEEPALIVE_GRACE = 1.5

#: Queued messages a client's loop broadcasts per turn: enough to make bursts cheap, few
#: enough that one flooding client does not hold the event loop.
DELIVERIES_PER_TURN = 64

#: Topics whose matching wildcard filters the broker remembers (then it starts over).
MAX_REMEMBERED_TOPICS = 100_000

#: What a refused connection gets before it is closed: CONNACK, "server unavailable"
#: (MQTT 3.1.1 §3.2.2.3, return code 3), which clients report as such.
SERVER_UNAVAILABLE = bytes([0x20, 0x02, 0x00, 0x03])

#: amqtt's SUBACK return code for a refused filter.
SUBSCRIPTION_REFUSED = 0x80


def amqtt_config(settings: BrokerSettings, database_url: str | None = None) -> dict[str, Any]:
    listeners: dict[str, Any] = {}
    if settings.broker_bind:
        listeners["default"] = {"type": "tcp", "bind": settings.broker_bind}
    tls = {
        "ssl": True,
        "certfile": str(settings.broker_cert_file),
        "keyfile": str(settings.broker_key_file),
    }
    if settings.broker_tls_bind:
        listeners["tls"] = {"type": "tcp", "bind": settings.broker_tls_bind, **tls}
    if settings.broker_mtls_bind:
        # A cafile on a listener means "client certificates required" (ChargelineBroker).
        ca = str(settings.broker_client_ca_file)
        listeners["mtls"] = {"type": "tcp", "bind": settings.broker_mtls_bind, "cafile": ca, **tls}
    for listener in listeners.values():
        listener["max_connections"] = -1
    plugins: dict[str, Any] = {
        "broker.retained.RetainedStore": {
            "path": str(settings.data_dir / "broker" / "retained.sqlite"),
        },
    }
    if settings.broker_allow_anonymous:
        plugins["amqtt.plugins.authentication.AnonymousAuthPlugin"] = {"allow_anonymous": True}
    else:
        if database_url is None:
            raise ValueError("the broker needs the registry's database for its identities")
        plugins["broker.access.RegistryAccess"] = {
            "database_url": database_url,
            "topic_root": settings.topic_root,
        }
    return {"listeners": listeners, "plugins": plugins}


class ChargelineBroker(Broker):  # type: ignore[misc]
    """amqtt's broker with the fixes chargeline cannot wait for. Keep each one small."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        max_packet_bytes: int,
        max_connections: int = 10_000,
        max_connections_per_address: int = 1_000,
        connect_timeout_s: float = 5.0,
        max_subscriptions: int = 100,
    ) -> None:
        super().__init__(config)
        self.max_packet_bytes = max_packet_bytes
        self.connect_timeout_s = connect_timeout_s
        self.max_subscriptions = max_subscriptions
        self.budget = ConnectionBudget(
            connection_cap(max_connections, raise_file_limit()), max_connections_per_address
        )
        self.noisy = Summarised(log)
        self._closing: set[asyncio.Future[None]] = set()
        # amqtt logs repr(self._subscriptions) after every SUBSCRIBE, at debug level but
        # formatted whatever the level: every filter and session, per subscribe.
        self._subscriptions: _Subscriptions = _Subscriptions(self._subscriptions)
        self._filters_changed = 0
        self._wildcards: list[str] = []
        self._wildcards_version: tuple[int, int] | None = None
        self._wildcard_matches: dict[str, list[str]] = {}
        found = self.plugins_manager.get_plugin("RegistryAccess")
        self.access: RegistryAccess | None = found if isinstance(found, RegistryAccess) else None

    @property
    def refusals(self) -> dict[str, int]:
        return dict(self.access.refusals) if self.access else {}

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else "?"
        refusal = self.budget.admit(address)
        if refusal is not None:
            self.noisy.warning(
                "connections refused", "refused a connection from %s: %s", address, refusal
            )
            with contextlib.suppress(Exception):
                writer.write(SERVER_UNAVAILABLE)
            writer.close()
            return
        try:
            # amqtt reads whatever length a packet header announces (up to 256 MB).
            watched = _WatchedReader(StreamReaderAdapter(reader), self.max_packet_bytes)
            await self._client_connected(listener_name, watched, StreamWriterAdapter(writer))
        finally:
            self.budget.release(address)
            # amqtt returns from a failed or ended session without always closing its
            # socket: a client that left before CONNECT stayed in CLOSE-WAIT for ever.
            writer.close()

    async def _create_server_instance(
        self,
        listener_name: str,
        listener_type: Any,
        address: str | None,
        port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> Any:
        # amqtt's TCP server, with a TLS handshake held to the CONNECT deadline (asyncio's
        # default lets a silent client hold a socket for a minute before any CONNECT).
        if str(getattr(listener_type, "value", listener_type)) != "tcp":
            return await super()._create_server_instance(
                listener_name, listener_type, address, port, ssl_context
            )
        return await asyncio.start_server(
            partial(self.stream_connected, listener_name=listener_name),
            address,
            port,
            reuse_address=True,
            ssl=ssl_context,
            ssl_handshake_timeout=self.connect_timeout_s if ssl_context else None,
            backlog=1024,
        )

    def _create_ssl_context(self, listener: Any) -> ssl.SSLContext:
        # amqtt sets CERT_OPTIONAL on every TLS listener (#387): a client without a
        # certificate got through. Ours: a listener with a cafile requires one, others
        # do not ask.
        context: ssl.SSLContext = Broker._create_ssl_context(listener)
        context.verify_mode = ssl.CERT_REQUIRED if listener.get("cafile") else ssl.CERT_NONE
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        # amqtt 0.12.1's version of this method, with authentication moved first. Its own
        # order deletes (clean session) or updates (persistent session) the session of
        # whatever client id a CONNECT names *before* checking who is connecting, so any
        # client could wipe or hijack a controller's session. Also the keepalive fix.
        where = format_client_message(address=remote_address, port=remote_port)
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                handler, session = await _Handler.init_from_connect(
                    reader, writer, self.plugins_manager
                )
        except TimeoutError:
            self.noisy.warning(
                "CONNECT deadlines missed",
                "no CONNECT from %s within %.0f s: closing",
                where,
                self.connect_timeout_s,
            )
            await writer.close()
            raise AMQTTError("no CONNECT in time") from None
        except (MQTTError, AMQTTError, NoDataError) as exc:
            self.noisy.warning(
                "unusable CONNECTs", "no usable CONNECT from %s: %s", where, shown(exc, 200)
            )
            await writer.close()
            raise AMQTTError(exc) from exc
        handler.refuse = partial(self._refuse_packet, writer)

        if not await self._authenticate_connect(session):
            code = IDENTIFIER_REJECTED if session.username else BAD_USERNAME_PASSWORD
            await ConnackPacket.build(0, code).to_stream(writer)
            await writer.close()
            raise MQTTError(f"connection from {where} refused")

        if session.clean_session:
            if session.client_id:
                await self._delete_session(session.client_id)
            else:
                session.client_id = gen_client_id()
            session.parent = 0
        elif session.client_id in self._sessions:
            existing, _ = self._sessions[session.client_id]
            for attr in (
                "will_flag", "will_message", "will_topic", "will_qos", "will_retain",
                "keep_alive", "username", "password", "ssl_object", "chargeline_identity",
            ):  # fmt: skip
                setattr(existing, attr, getattr(session, attr, None))
            session = existing
            session.parent = 1
        else:
            session.parent = 0

        # Keepalive (#308): amqtt's reader times out after keep_alive seconds but then does
        # nothing, and it pays for that with a task and a timer per packet read and a timer
        # per packet sent. Ours: one watchdog per connection (``_WatchedReader.watch``) that
        # closes the connection as lost after 1.5 × keepalive of silence (the will fires).
        # keep_alive 0 turns amqtt's timers off.
        session.chargeline_silence_s = (
            session.keep_alive * KEEPALIVE_GRACE if session.keep_alive > 0 else None
        )
        session.keep_alive = 0
        return handler, session

    def _refuse_packet(self, writer: WriterAdapter, session: Session | None, why: str) -> None:
        """Close a connection whose client broke a rule no packet can answer."""
        self.noisy.warning(
            "connections closed for breaking the rules",
            "closing %s: %s",
            shown(session.client_id if session else None),
            why,
        )
        # The raw transport, aborted: what is queued for the client is dropped with it.
        transport = getattr(getattr(writer, "_writer", None), "transport", None)
        if transport is not None:
            transport.abort()

    async def _authenticate_connect(self, session: Session) -> bool:
        if self.access is None:  # development broker: anonymous
            return bool(await super()._authenticate(session, None))
        return await self.access.authenticate(session=session)

    async def _stop_handler(self, handler: BrokerProtocolHandler) -> None:
        """Stop a handler whose reader really stops.

        amqtt's reader loop reads inside ``asyncio.wait_for``, which in Python 3.11 can
        swallow the cancel that ``stop()`` sends when a read completes at the same moment;
        ``stop()`` then waits for ever for a reader that goes on reading, and with it the
        broker's shutdown (seen as a demo that did not end on SIGTERM). The reader is
        cancelled until it has ended, then amqtt stops the rest."""
        reader = getattr(handler, "_reader_task", None)
        if reader is not None and reader is not asyncio.current_task():
            while not reader.done():
                reader.cancel()
                await asyncio.wait({reader}, timeout=0.5)
            handler._reader_stopped.set()
        await super()._stop_handler(handler)

    def _silent(self, handler: BrokerProtocolHandler, session: Session) -> None:
        log.warning(
            "%s silent for %.0f s (1.5 × keepalive): closing, its will follows",
            session.client_id,
            session.chargeline_silence_s,
        )
        self._closing.add(task := asyncio.ensure_future(handler.handle_connection_closed()))
        task.add_done_callback(self._closing.discard)

    async def disconnect(self, client_id: str) -> None:
        """Close a client's connection as lost (its will fires)."""
        _, handler = self._sessions.get(client_id, (None, None))
        if handler is not None:
            await handler.handle_connection_closed()

    async def _topic_filtering(self, session: Session, topic: str, action: Action) -> bool:
        # amqtt asks its topic plugins through a new task per plugin for every delivered
        # message; ours decides synchronously (a dictionary lookup once warm).
        # The development broker (``broker_allow_anonymous``) has no topic plugin: open.
        return self.access is None or self.access.decide(session, topic, action)

    # --- delivery: find a message's subscribers without scanning every filter ----------
    # amqtt 0.12.1 matches every message against every topic filter any client holds, and
    # formats a debug line for each miss whatever the log level. A controller holds ten
    # exact filters, so 200 controllers cut QoS 1 throughput from ~2,700 to ~660 msg/s
    # (bench.broker). Exact filters are found by one dictionary lookup; only the few
    # wildcard filters (the services') are matched one by one.

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

    async def _handle_disconnect(
        self,
        client_session: Session,
        handler: BrokerProtocolHandler,
        disconnect_waiter: asyncio.Future[Any],
    ) -> None:
        await super()._handle_disconnect(client_session, handler, disconnect_waiter)
        # A clean session ends with its connection (MQTT 3.1.1 §3.1.2.4); amqtt kept its
        # subscriptions and queues until the same client id came back, if ever.
        current = self._sessions.get(client_session.client_id, (None, None))[0]
        if client_session.clean_session and current is client_session:
            await self._delete_session(client_session.client_id)

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

    # --- retained messages: only a session's own, found by lookup ------------------------

    async def _handle_client_session(  # noqa: PLR0917  (amqtt's signature)
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        client_session: Session,
        handler: BrokerProtocolHandler,
        server: Any,
        listener_name: str,
    ) -> None:
        # amqtt 0.12.1's version, but at the end it offered retained messages for every
        # topic filter any client holds (one call per filter: 20,000 for 2,000 controllers,
        # per connect). Only a persistent session's own filters can have any to send.
        while True:
            try:
                client_session.transitions.connect()
                break
            except (MachineError, ValueError):
                if client_session.transitions.is_connected():
                    log.warning("%s is already connected: taking over", client_session.client_id)
                    _, old_handler = self._sessions[client_session.client_id]
                    await old_handler.handle_connection_closed()
                    await self._stop_handler(old_handler)
                    break
                await asyncio.sleep(1)  # amqtt: "reconnecting too quickly, make it wait"

        handler.attach(client_session, reader, writer)
        silence_s = getattr(client_session, "chargeline_silence_s", None)
        watched = reader if isinstance(reader, _WatchedReader) else None
        if watched is not None and silence_s is not None:
            watched.watch(silence_s, partial(self._silent, handler, client_session))
        self._sessions[client_session.client_id] = (client_session, handler)
        await handler.mqtt_connack_authorize(True)  # refused clients never get here
        await self.plugins_manager.fire_event(
            BrokerEvents.CLIENT_CONNECTED,
            client_id=client_session.client_id,
            client_session=client_session,
        )
        await handler.start()
        await self._publish_session_retained_messages(client_session)
        if not client_session.clean_session:
            own = [
                f
                for f, subs in self._subscriptions.items()
                if any(s is client_session for s, _ in subs)
            ]
            for topic_filter in own:
                await self._publish_retained_messages_for_subscription(
                    (topic_filter, QOS_0), client_session
                )
        try:
            await self._client_message_loop(client_session, handler)
        finally:
            if watched is not None:
                watched.stop_watching()

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
            found = [
                m for t, m in self._retained_messages.items() if self._matches(t, topic_filter)
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


class _Handler(BrokerProtocolHandler):  # type: ignore[misc]
    """amqtt's protocol handler, refusing QoS 2 publishes.

    Nothing in the wire contract uses QoS 2, and amqtt kept every QoS 2 message whose PUBREL
    never came, for as long as the broker ran (a controller's two connections grew it by
    500 MiB). MQTT 3.1.1 cannot refuse one publish, so the connection is closed, unread.
    """

    refuse: Callable[[Session | None, str], None] | None = None

    async def handle_publish(self, publish_packet: PublishPacket) -> None:
        if publish_packet.qos == QOS_2:
            if self.refuse is not None:
                self.refuse(self.session, "a QoS 2 publish (this broker takes QoS 0 and 1)")
            return
        await super().handle_publish(publish_packet)


class _Subscriptions(dict[str, list[tuple[Session, int]]]):
    """amqtt's topic filter → subscribers map, with a repr that does not list them all."""

    def __repr__(self) -> str:
        return f"<{len(self)} topic filters>"


class PacketTooLarge(AMQTTError):  # type: ignore[misc]
    pass


class _WatchedReader(ReaderAdapter):  # type: ignore[misc]
    """A connection's reader. It refuses to read a packet body larger than the limit (amqtt
    reads one in one call), and notes when bytes last arrived, for ``watch``."""

    def __init__(self, inner: StreamReaderAdapter, limit: int) -> None:
        self.inner, self.limit = inner, limit
        self._loop = asyncio.get_running_loop()
        self.last_read = self._loop.time()
        self._watchdog: asyncio.TimerHandle | None = None

    async def read(self, n: int = -1) -> bytes:
        if n > self.limit:
            raise PacketTooLarge(f"packet of {n} bytes, limit {self.limit}: closing")
        data: bytes = await self.inner.read(n)
        self.last_read = self._loop.time()
        return data

    def watch(self, silence_s: float, on_silence: Callable[[], None]) -> None:
        """Call ``on_silence`` once nothing has arrived for ``silence_s``.

        One timer per connection: when it fires early (bytes came since it was set), it is
        set again for the rest of the period from the last read.
        """

        def check() -> None:
            idle = self._loop.time() - self.last_read
            if idle >= silence_s:
                self._watchdog = None
                on_silence()
            else:
                self._watchdog = self._loop.call_later(silence_s - idle, check)

        self.stop_watching()
        self._watchdog = self._loop.call_later(silence_s, check)

    def stop_watching(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def feed_eof(self) -> None:
        self.inner.feed_eof()


class EmbeddedBroker:
    """``async with EmbeddedBroker(settings): …`` runs the broker for the block's duration."""

    def __init__(self, settings: BrokerSettings, database_url: str | None = None) -> None:
        self.settings = settings
        self.database_url = database_url  # where identities live (unless anonymous)
        self.broker: ChargelineBroker | None = None

    async def __aenter__(self) -> EmbeddedBroker:
        self.broker = ChargelineBroker(
            amqtt_config(self.settings, self.database_url),
            max_packet_bytes=self.settings.broker_max_packet_bytes,
            max_connections=self.settings.broker_max_connections,
            max_connections_per_address=self.settings.broker_max_connections_per_address,
            connect_timeout_s=self.settings.broker_connect_timeout_s,
            max_subscriptions=self.settings.broker_max_subscriptions,
        )
        await self.broker.start()
        listening = [
            f"{kind} {bind}"
            for kind, bind in (
                ("tcp", self.settings.broker_bind),
                ("tls", self.settings.broker_tls_bind),
                ("mtls", self.settings.broker_mtls_bind),
            )
            if bind
        ]
        log.info(
            "broker listening on %s%s",
            ", ".join(listening),
            " (ANONYMOUS: development only)" if self.settings.broker_allow_anonymous else "",
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.broker is not None:
            if self.broker.refusals:
                log.info("refusals since start: %s", self.broker.refusals)
            await self.broker.shutdown()


async def serve(settings: BrokerSettings, database_url: str | None) -> None:
    async with EmbeddedBroker(settings, database_url):
        await asyncio.Event().wait()

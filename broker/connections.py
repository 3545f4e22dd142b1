"""The broker's connections (part of ``ChargelineBroker``, see ``broker.server``): admission
(caps in total and per address, a CONNECT deadline, TLS held to it), authentication before
the client id is looked up, the keepalive watchdog, oversized packets and QoS 2 refused,
and every connection's socket closed when it ends."""

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
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import (
    BAD_USERNAME_PASSWORD,
    IDENTIFIER_REJECTED,
    ConnackPacket,
)
from amqtt.mqtt.constants import QOS_0, QOS_2
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.mqtt.publish import PublishPacket
from amqtt.session import Session
from amqtt.utils import format_client_message, gen_client_id
from transitions import MachineError

from broker.access import RegistryAccess
from kernel.limits import ConnectionBudget, peer_address
from kernel.logsafe import Summarised, shown

log = logging.getLogger(__name__)

#: A client silent for this many keepalive periods is disconnected (MQTT 3.1.1 §3.1.2.10).
KEEPALIVE_GRACE = 1.5

#: What a refused connection gets before it is closed: CONNACK, "server unavailable"
#: (MQTT 3.1.1 §3.2.2.3, return code 3), which clients report as such.
SERVER_UNAVAILABLE = bytes([0x20, 0x02, 0x00, 0x03])


class Connections(Broker):  # type: ignore[misc]
    """Admission, authentication, keepalive and the end of connections."""

    # Set by ChargelineBroker.__init__.
    access: RegistryAccess | None
    budget: ConnectionBudget
    #: Connections closed at once because a cap was reached (the metrics).
    connections_capped: int
    noisy: Summarised
    max_packet_bytes: int
    connect_timeout_s: float
    _closing: set[asyncio.Future[None]]

    async def stream_connected(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
    ) -> None:
        address = peer_address(writer.get_extra_info("peername"))
        refusal = self.budget.admit(address)
        if refusal is not None:
            self.connections_capped += 1
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

        session = await self._resume(session)

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

    async def _resume(self, session: Session) -> Session:
        """A clean session replaces whatever the client id had; a persistent one resumes
        the session kept for it, with this connection's details."""
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
        return session

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

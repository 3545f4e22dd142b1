"""A lean MQTT link for high-rate subscribers: paho's protocol engine on the asyncio loop.

Ingest receives one message per controller per minute from thousands of controllers, so its
cost per message decides how many controllers one process can serve. aiomqtt wraps every
message in its own objects and an asyncio queue, and paho itself reads each packet with
three or four ``recv`` calls of a few bytes, returning to the event loop after every packet.
Measured on the project's 2-core machine (Mosquitto, 8-reading messages, QoS 1, CPU time
of the receiving process):

==========================================  ===============
receive path                                CPU per message
==========================================  ===============
aiomqtt ``async for message in messages``   76–105 µs
paho ``loop_start()`` thread                58–67 µs
this link (paho, buffered reads, asyncio)   21–27 µs
==========================================  ===============

So this module keeps paho for the protocol (packets, QoS 1 handshakes, keepalive) and adds
two things: reads come from a 64 KiB buffer, and one readiness callback drains every
complete packet in it. Messages are handed to a plain callback ``on_message(topic,
payload)``; the consumer applies backpressure with ``pause_reading()``, which stops reading
the socket so TCP pushes back to the broker.

The price is one override of a private paho method (``_sock_recv``); paho-mqtt is pinned
to the 2.x line in pyproject.toml and ``tests/test_paho_link.py`` checks the behaviour.
Edge agents and the gateway, which handle a few messages a minute, use aiomqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from kernel.mqtt import backoff
from kernel.settings import MqttUrl
from schemas.errors import ChargelineError

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024


class LinkError(ChargelineError, ConnectionError):
    """The broker refused the connection or a subscription."""


class _BufferedClient(paho.Client):
    """paho with buffered socket reads: one ``recv`` per 64 KiB instead of ~4 per packet.

    Workaround for paho reading the fixed header byte by byte; keep it this small. The
    buffer is only ever drained by ``loop_read`` on the event loop thread.
    """

    _rbuf = b""
    _rpos = 0
    #: One socket read per readiness callback: under a flood, refilling the buffer for as
    #: long as data arrives would starve every other task (the database writes included).
    may_recv = False

    def _sock_recv(self, bufsize: int) -> bytes:
        buf, pos = self._rbuf, self._rpos
        if pos >= len(buf):
            if not self.may_recv:
                raise BlockingIOError  # paho keeps the partial packet and resumes next time
            self.may_recv = False
            buf = super()._sock_recv(READ_CHUNK)  # raises BlockingIOError when empty
            if not buf:
                return buf  # the connection closed
            pos = 0
        out = buf[pos : pos + bufsize]
        self._rbuf, self._rpos = buf, pos + len(out)
        return out

    @property
    def buffered(self) -> int:
        return len(self._rbuf) - self._rpos


class PahoLink:
    """One MQTT session, reconnected with backoff, delivering messages to a callback.

    ``run(on_connected)`` connects, subscribes to ``subscriptions`` (``(filter, qos)``
    pairs), calls ``on_connected()`` and then serves the connection until cancelled,
    reconnecting after any loss. ``publish()`` may be called whenever ``connected``.

    ``max_inflight`` 0 means unlimited outgoing QoS 1 messages in flight: with a limit,
    paho rescans its whole outgoing queue on every PUBACK (quadratic in the queue).
    """

    def __init__(
        self,
        url: MqttUrl,
        *,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        on_message: Callable[[str, bytes], None],
        clean_session: bool = True,
        keepalive: int = 60,
        max_inflight: int = 0,
    ) -> None:
        self.url = url
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.on_message = on_message
        #: Messages whose ``on_message`` raised: skipped, never retried by paho.
        self.callback_errors = 0
        self.clean_session = clean_session
        self.keepalive = keepalive
        self.max_inflight = max_inflight
        self.tls_context = url.ssl_context()
        self._client: _BufferedClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._paused = False
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._suback: asyncio.Future[list[ReasonCode]] | None = None
        self._lost: asyncio.Event = asyncio.Event()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Queue a publish; False when not connected (the caller decides what that means)."""
        client = self._client
        if client is None:
            return False
        return client.publish(topic, payload, qos=qos).rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def pause_reading(self) -> None:
        """Stop reading the socket (backpressure); messages already buffered stay there."""
        if not self._paused:
            self._paused = True
            if self._loop is not None and self._sock is not None:
                self._loop.remove_reader(self._sock)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            if self._loop is not None and self._sock is not None:
                self._loop.add_reader(self._sock, self._readable)
                self._loop.call_soon(self._readable)  # the buffer may already hold packets

    async def run(self, on_connected: Callable[[], None] = lambda: None) -> None:
        delays = backoff()
        while True:
            try:
                await self._session(on_connected)
                delays = backoff()
                log.warning("MQTT connection to %r lost; reconnecting", self.url)
            except (OSError, LinkError, TimeoutError) as exc:
                delay = next(delays)
                log.warning(
                    "MQTT connection to %r failed (%s); retrying in %.1f s",
                    self.url,
                    str(exc) or type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)

    # --- one session -------------------------------------------------------------------
    async def _session(self, on_connected: Callable[[], None]) -> None:
        loop = self._loop = asyncio.get_running_loop()
        # A new session reads at least its handshake; a consumer that is still full pauses
        # again on the next message it gets.
        self._paused = False
        client = self._new_client()
        self._lost = asyncio.Event()
        self._connack = loop.create_future()
        self._client = client
        try:
            # connect() resolves the name and opens the socket: blocking, so off the loop.
            await loop.run_in_executor(
                None, client.connect, self.url.host, self.url.port, self.keepalive
            )
            async with asyncio.timeout(10):
                code = await self._connack
            if code.is_failure:
                raise LinkError(f"broker refused the connection: {code}")
            if self.subscriptions:
                self._suback = loop.create_future()
                client.subscribe(self.subscriptions)
                async with asyncio.timeout(10):
                    codes = await self._suback
                refused = [
                    f for (f, _), c in zip(self.subscriptions, codes, strict=False) if c.is_failure
                ]
                if refused:
                    raise LinkError(f"broker refused subscriptions {refused}")
            on_connected()
            while not self._lost.is_set():
                if client.loop_misc() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                    break
                with contextlib.suppress(TimeoutError):  # not wait_for: see mqtt._Client
                    async with asyncio.timeout(1.0):
                        await self._lost.wait()
        finally:
            self._client = None
            if client.is_connected():
                client.disconnect()
                with contextlib.suppress(OSError):
                    client.loop_write()
            self._close_socket()

    def _new_client(self) -> _BufferedClient:
        client = _BufferedClient(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, clean_session=self.clean_session
        )
        if self.url.username is not None:
            client.username_pw_set(self.url.username, self.url.password)
        if self.tls_context is not None:
            client.tls_set_context(self.tls_context)
        client.max_inflight_messages_set(self.max_inflight)
        client.max_queued_messages_set(0)
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = lambda _c, _u, _s: self._close_socket()
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # --- paho callbacks (socket ones may come from the connect thread) ------------------
    def _on_socket_open(self, _client: paho.Client, _userdata: Any, sock: Any) -> None:
        # TCP_NODELAY: without it a QoS 1 round trip waits on delayed ACKs (FIELD-NOTES.md).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._add_reader, sock)

    def _add_reader(self, sock: socket.socket) -> None:
        if self._sock is sock and not self._paused and self._loop is not None:
            self._loop.add_reader(sock, self._readable)

    def _close_socket(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None and self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._lost.set()

    def _on_register_write(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._want_write, sock, client, True)

    def _on_unregister_write(self, client: paho.Client, _userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._want_write, sock, client, False)

    def _want_write(self, sock: socket.socket, client: paho.Client, want: bool) -> None:
        if self._sock is not sock or self._loop is None:
            return  # closed in the meantime
        if want:
            self._loop.add_writer(sock, client.loop_write)
        else:
            self._loop.remove_writer(sock)

    def _readable(self) -> None:
        """Read the socket once, then handle every complete packet in the read buffer."""
        client = self._client
        if client is None or self._paused:
            return
        client.may_recv = True
        rc = client.loop_read()
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and client.buffered and not self._paused:
            rc = client.loop_read()

    def _on_connect(
        self, _c: paho.Client, _u: Any, _flags: Any, code: ReasonCode, _props: Any
    ) -> None:
        if self._connack is not None and not self._connack.done():
            self._connack.set_result(code)

    def _on_subscribe(
        self, _c: paho.Client, _u: Any, _mid: int, codes: list[ReasonCode], _props: Any
    ) -> None:
        if self._suback is not None and not self._suback.done():
            self._suback.set_result(codes)

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, code: ReasonCode, _p: Any) -> None:
        log.debug("MQTT disconnected: %s", code)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._lost.set)

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        # Nothing may escape into paho: it would abandon the packet mid-handling and read it
        # again on every turn, so one message would stop the link for everyone. The consumer
        # keeps its own dead letters; this is the last line, counted and logged (bounded).
        # A topic that is not UTF-8 still reaches the consumer (as a dead letter to be).
        topic = bytes(message._topic).decode("utf-8", "backslashreplace")
        try:
            self.on_message(topic, bytes(message.payload))
        except Exception:
            self.callback_errors += 1
            if self.callback_errors <= 10 or self.callback_errors % 1000 == 0:
                log.exception(
                    "handling a message on %r failed (%d so far); it is skipped",
                    topic[:200],
                    self.callback_errors,
                )

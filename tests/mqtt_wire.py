"""Raw MQTT packets and sockets, for talking to a broker the way a hostile or broken client does."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any


def _string(value: str | bytes) -> bytes:
    data = value.encode() if isinstance(value, str) else value
    return struct.pack("!H", len(data)) + data


def _remaining(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    keepalive: int = 60,
    will: tuple[str, bytes] | None = None,
) -> bytes:
    flags = 0x02  # clean session
    payload = _string(client_id)
    if will is not None:
        flags |= 0x04 | 0x08 | 0x20  # will, QoS 1, retain
        payload += _string(will[0]) + _string(will[1])
    if username is not None:
        flags |= 0x80
        payload += _string(username)
    if password is not None:
        flags |= 0x40
        payload += _string(password)
    body = _string("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload
    return b"\x10" + _remaining(len(body)) + body


def subscribe_packet(packet_id: int, filters: list[str], qos: int = 1) -> bytes:
    body = struct.pack("!H", packet_id) + b"".join(_string(f) + bytes([qos]) for f in filters)
    return b"\x82" + _remaining(len(body)) + body


def publish_packet(packet_id: int, topic: str, payload: bytes, qos: int = 1) -> bytes:
    """A PUBLISH at QoS 1 (or 2: which the wire contract never uses)."""
    body = _string(topic) + struct.pack("!H", packet_id) + payload
    return bytes([0x30 | qos << 1]) + _remaining(len(body)) + body


def connect_from(address: str, port: int, timeout: float = 10) -> socket.socket:
    """A TCP connection to 127.0.0.1:``port`` from another loopback ``address`` (Linux
    routes all of 127/8 to this machine), as a stranger on the network would open it."""
    sock = socket.socket()
    sock.bind((address, 0))
    sock.settimeout(timeout)
    sock.connect(("127.0.0.1", port))
    return sock


#: DISCONNECT: the client is leaving on purpose (no will).
DISCONNECT_PACKET = b"\xe0\x00"


async def drain(client: Any, seconds: float) -> list[tuple[str, bytes]]:
    """Every (topic, payload) an aiomqtt client receives within ``seconds``."""
    got: list[tuple[str, bytes]] = []
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                got.append((message.topic.value, message.payload))
    return got

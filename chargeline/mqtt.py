"""What every chargeline MQTT client shares: socket options, TLS, and reconnect delays."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from typing import Any

import aiomqtt

from chargeline.settings import MqttUrl

#: Without TCP_NODELAY a QoS 1 round trip through amqtt takes ~800 ms instead of ~4 ms
#: (Nagle's algorithm meets delayed ACKs; FIELD-NOTES.md).
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]


def client(url: MqttUrl, *, identifier: str, **options: Any) -> aiomqtt.Client:
    """An aiomqtt client for ``url`` with TCP_NODELAY and, for mqtts://, TLS."""
    mqtt_client = aiomqtt.Client(
        url.host,
        url.port,
        username=url.username,
        password=url.password,
        identifier=identifier,
        socket_options=NODELAY,
        tls_context=url.ssl_context(),
        **options,
    )
    # We pipeline publishes on purpose (acks, catch-up batches); don't warn about it.
    mqtt_client.pending_calls_threshold = 10_000
    return mqtt_client


def backoff(first: float = 0.2, cap: float = 10.0) -> Iterator[float]:
    """Growing, randomised reconnect delays ("full jitter"): no thundering herd after an outage."""
    ceiling = first
    while True:
        yield random.uniform(first / 2, ceiling)
        ceiling = min(cap, ceiling * 2)

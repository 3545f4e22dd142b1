"""What every chargeline MQTT client shares: socket options, TLS, and reconnect delays."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import socket
from collections.abc import Awaitable, Iterator
from typing import Any, TypeVar

import aiomqtt

from kernel.settings import MqttUrl

#: Without TCP_NODELAY a QoS 1 round trip through amqtt takes ~800 ms instead of ~4 ms
#: (Nagle's algorithm meets delayed ACKs; FIELD-NOTES.md).
NODELAY = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]

T = TypeVar("T")


class _Client(aiomqtt.Client):
    async def _wait_for(self, fut: Awaitable[T], timeout: float | None) -> T:  # noqa: ASYNC109  (aiomqtt's signature)
        # aiomqtt waits with asyncio.wait_for, which on Python 3.11 swallows a cancel that
        # arrives in the same instant as the result (CPython gh-86296, fixed in 3.12): the
        # cancelled task runs on, and whatever waits for it to stop waits forever. CI saw
        # the demo's edge agents sample for ten minutes after Ctrl-C. asyncio.timeout
        # delivers the cancel to the waiting coroutine itself, so it cannot be lost.
        timeout = self.timeout if timeout is None else timeout
        try:
            async with asyncio.timeout(None if timeout == math.inf else timeout):
                return await fut
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None


def client(url: MqttUrl, *, identifier: str, **options: Any) -> aiomqtt.Client:
    """An aiomqtt client for ``url`` with TCP_NODELAY and, for mqtts://, TLS."""
    mqtt_client = _Client(
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


#: CONNACK refusals (MQTT 3.1.1 §3.2.2.3, as paho words them) that mean "this login".
_LOGIN_REFUSALS = ("identifier not valid", "bad user name or password", "not authori")


def refusal_hint(exc: BaseException, username: str | None) -> str:
    """What probably went wrong when the broker refused to connect, for the log line.

    chargeline's broker answers a wrong password as 'Client identifier not valid' (amqtt
    has no other code for it), which sends people looking at the client id."""
    text = str(exc).lower()
    if not any(refusal in text for refusal in _LOGIN_REFUSALS):
        return ""
    return (
        f"; the broker refused the login of {username!r}: most likely its password is wrong"
        " or was rotated (chargeline broker credentials issue … prints a new one, to be put"
        " in CHARGELINE_MQTT_URL), or the identity was revoked, or the client id is not"
        " the username"
    )


async def link_down(
    exc: BaseException,
    url: MqttUrl,
    delays: Iterator[float],
    log: logging.Logger,
    *,
    who: str = "",
) -> None:
    """An MQTT link failed: say why (with a hint when the broker refused the login) and
    wait the next of ``delays`` before the caller connects again."""
    delay = next(delays)
    log.warning(
        "%sMQTT link down (%s%s); retrying in %.1f s",
        f"{who}: " if who else "",
        exc,
        refusal_hint(exc, url.username),
        delay,
    )
    await asyncio.sleep(delay)


def backoff(first: float = 0.2, cap: float = 10.0) -> Iterator[float]:
    """Growing, randomised reconnect delays ("full jitter"): no thundering herd after an outage."""
    ceiling = first
    while True:
        yield random.uniform(first / 2, ceiling)
        ceiling = min(cap, ceiling * 2)

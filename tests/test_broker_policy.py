"""The attack matrix (issue 4), run against the embedded amqtt broker and against a real
Mosquitto configured by ``chargeline broker export mosquitto``.

Controller A is a real, registered controller with valid credentials that tries to reach
controller B. After every attack the good clients (B, ingest, gateway) must still work:
``_good_clients_work`` sends a command to B and a meter batch from B to ingest."""

from __future__ import annotations

import asyncio
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiomqtt
import psycopg
import pytest

from broker import identities
from broker.policy import Role
from kernel import mqtt
from schemas.topics import TopicKind
from tests.brokers import (
    MAX_PACKET,
    TOPICS,
    Amqtt,
    BrokerUnderTest,
    Site,
    brokers,
    raw_connect,
    tls_connack,
)
from tests.mqtt_wire import connect_packet, drain, publish_packet

pytestmark = pytest.mark.processes

INGEST, GATEWAY = "svc_ingest", "svc_gateway"


@pytest.fixture(scope="module", params=["amqtt", "mosquitto"])
def broker(
    request: pytest.FixtureRequest, site: Site, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BrokerUnderTest]:
    yield from brokers(site, tmp_path_factory.mktemp(request.param), request.param)


# --- helpers --------------------------------------------------------------------------------


async def _next(client: aiomqtt.Client, topic: str, seconds: float = 5) -> bytes:
    """The next payload on ``topic`` (others are skipped)."""
    async with asyncio.timeout(seconds):
        async for message in client.messages:
            if message.topic.value == topic:
                assert isinstance(message.payload, bytes)
                return message.payload
    raise AssertionError("unreachable")


async def _arrives(client: aiomqtt.Client, topic: str, payload: bytes) -> None:
    """Wait for ``payload`` on ``topic``; earlier messages are skipped."""
    while await _next(client, topic) != payload:
        pass


@dataclass
class Good:
    b: aiomqtt.Client
    ingest: aiomqtt.Client
    gateway: aiomqtt.Client


@asynccontextmanager
async def _good_clients(broker: BrokerUnderTest) -> AsyncIterator[Good]:
    b = broker.site.b
    async with (
        broker.client(b) as cb,
        broker.client(INGEST) as ingest,
        broker.client(GATEWAY) as gateway,
    ):
        await cb.subscribe(TOPICS.filter_for(TopicKind.DESIRED, b), qos=1)
        await ingest.subscribe(TOPICS.filter_for(TopicKind.METER, "+"), qos=1)
        yield Good(cb, ingest, gateway)


async def _good_clients_work(broker: BrokerUnderTest, good: Good) -> None:
    """A command reaches B, and B's meter batch reaches ingest."""
    b = broker.site.b
    token = uuid.uuid4().bytes
    await good.gateway.publish(TOPICS.desired(b, 1), token, qos=1)
    await _arrives(good.b, TOPICS.desired(b, 1), token)
    await good.b.publish(TOPICS.meter(b), token, qos=1)
    await _arrives(good.ingest, TOPICS.meter(b), token)


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


# --- the matrix -----------------------------------------------------------------------------


def test_a_controller_cannot_publish_to_another_controllers_topics(broker: BrokerUnderTest) -> None:
    """A's forged meter batch and forged command for B reach neither ingest nor B."""

    async def scenario() -> None:
        site = broker.site
        async with _good_clients(broker) as good, broker.client(site.a) as a:
            for topic in (TOPICS.meter(site.b), TOPICS.desired(site.b, 1), TOPICS.ack(site.b)):
                await a.publish(topic, b"forged", qos=1)
            assert await drain(good.b, 1.0) == []
            assert await drain(good.ingest, 0.2) == []
            await _good_clients_work(broker, good)

    run(scenario())


@pytest.mark.parametrize(
    "topic_filter", ["#", "$SYS/#", "cl/v1/ctl/+/outlet/+/desired", "B-desired"]
)
def test_a_controller_cannot_read_beyond_its_own_subtree(
    broker: BrokerUnderTest, topic_filter: str
) -> None:
    """Subscribing to everything, to $SYS or to B's commands yields none of them, retained
    or live (the broker refuses the subscription or delivers nothing)."""
    site = broker.site
    if topic_filter == "B-desired":
        topic_filter = TOPICS.filter_for(TopicKind.DESIRED, site.b)

    async def scenario() -> None:
        async with _good_clients(broker) as good:
            await good.gateway.publish(TOPICS.desired(site.b, 2), b"retained", qos=1, retain=True)
            async with broker.client(site.a) as a:
                await a.subscribe(topic_filter, qos=1)
                await good.gateway.publish(TOPICS.desired(site.b, 1), b"live", qos=1)
                await good.b.publish(TOPICS.meter(site.b), b"reading", qos=1)
                assert await drain(a, 1.5) == []
                await _good_clients_work(broker, good)

    run(scenario())
    if isinstance(broker, Amqtt):  # refusals are logged with the identity and the topic
        logged = f"refused subscribe: {site.a} (controller) on {topic_filter!r}"
        lines = [line for line in broker.proc.log().splitlines() if logged in line]
        assert lines and re.search(r"\(.*\b\d+ subscribe\b.* so far\)$", lines[-1]), lines


@pytest.mark.parametrize(
    "who", ["anonymous", "wrong password", "unknown identity", "another's client id"]
)
def test_a_bad_connection_is_refused_and_takes_nobody_over(
    broker: BrokerUnderTest, who: str
) -> None:
    """Anonymous, a wrong password and an unknown name are refused; A connecting with B's
    client id is refused (amqtt) or connected as A (Mosquitto) and B's session lives on."""
    site = broker.site

    async def scenario() -> None:
        async with _good_clients(broker) as good:
            attempt = {
                "anonymous": broker.client(None, client_id=f"anon-{uuid.uuid4().hex[:4]}"),
                "wrong password": broker.client(site.a, password="not-the-password"),
                "unknown identity": broker.client("nobody", password="x", client_id="nobody"),
                "another's client id": broker.client(site.a, client_id=site.b),
            }[who]
            if who == "another's client id":
                try:
                    async with attempt as a:
                        await a.subscribe("#", qos=1)
                        await good.gateway.publish(TOPICS.desired(site.b, 1), b"for B", qos=1)
                        assert await drain(a, 1.0) == []
                except aiomqtt.MqttError:
                    pass  # refused outright: just as good
            else:
                with pytest.raises(aiomqtt.MqttError):
                    async with attempt:
                        pass
            await _good_clients_work(broker, good)

    run(scenario())


def test_a_revoked_credential_is_refused_without_a_restart(broker: BrokerUnderTest) -> None:
    """A rotated password stops working. After `revoke` (and, for Mosquitto, an export and
    SIGHUP), the controller's next
    connection is refused and its live session can no longer publish: amqtt closes it,
    Mosquitto denies it everything. Nobody else is disturbed."""
    site = broker.site

    async def connect_r() -> None:
        async with broker.client(site.r):
            pass

    async def live_session_is_cut(r: aiomqtt.Client, good: Good) -> None:
        deadline = time.monotonic() + 5
        while True:
            token = uuid.uuid4().bytes
            try:
                await r.publish(TOPICS.meter(site.r), token, qos=1, timeout=1)
            except aiomqtt.MqttError:
                return  # the broker closed the session
            if token not in [p for _, p in await drain(good.ingest, 0.5)]:
                return  # the broker dropped the publish
            assert time.monotonic() < deadline, "the revoked session still publishes"

    old_password = site.passwords[site.r]
    with psycopg.connect(site.database, autocommit=True) as conn:  # R may be revoked already
        site.passwords[site.r] = identities.issue(conn, site.r, Role.CONTROLLER)
    broker.reload()

    async def scenario() -> None:
        deadline = time.monotonic() + 5
        while True:  # the new password is in force as soon as the broker has reloaded
            try:
                await connect_r()
                break
            except aiomqtt.MqttError:
                assert time.monotonic() < deadline, "the re-issued credential never worked"
                await asyncio.sleep(0.2)
        with pytest.raises(aiomqtt.MqttError) as refused:  # rotated: the old password
            async with broker.client(site.r, password=old_password):
                pass
        # What the edge logs about it names the likely cause, whatever code the broker used.
        assert "password is wrong or was rotated" in mqtt.refusal_hint(refused.value, site.r)
        async with _good_clients(broker) as good, broker.client(site.r) as r:
            with psycopg.connect(site.database, autocommit=True) as conn:
                identities.revoke(conn, site.r)
            broker.reload()
            await live_session_is_cut(r, good)
            deadline = time.monotonic() + 5
            while True:
                try:
                    await connect_r()
                except aiomqtt.MqttError:
                    break
                assert time.monotonic() < deadline, "the revoked credential still connects"
                await asyncio.sleep(0.2)
            await _good_clients_work(broker, good)

    run(scenario())


def test_a_will_cannot_forge_another_controllers_command(broker: BrokerUnderTest) -> None:
    """A connects with a retained will on B's desired topic and drops its connection: B
    gets nothing and no retained command is left for it (the connection is refused, or
    the will is not published)."""
    site = broker.site
    packet = connect_packet(
        site.a,
        username=site.a,
        password=site.passwords[site.a],
        will=(TOPICS.desired(site.b, 1), b"forged ON"),
    )

    async def scenario() -> None:
        async with _good_clients(broker) as good:
            sock, _ = raw_connect(broker.ports["tcp"], packet)
            sock.close()  # no DISCONNECT: an abnormal end, which sends the will
            assert b"forged ON" not in [p for _, p in await drain(good.b, 1.5)]
            await _good_clients_work(broker, good)
        async with broker.client(site.b) as b:  # nothing retained for B either
            await b.subscribe(TOPICS.desired(site.b, 1), qos=1)
            assert b"forged ON" not in [p for _, p in await drain(b, 1.0)]

    run(scenario())


@pytest.mark.parametrize("cert", ["missing", "expired", "foreign CA"])
def test_the_mtls_listener_refuses_a_bad_client_certificate(
    broker: BrokerUnderTest, cert: str
) -> None:
    """No certificate, an expired one or one from another CA: no CONNACK, while B's valid
    certificate gets one on the same path."""
    site = broker.site
    assert site.ca is not None
    pki = site.tmp
    files = {
        "missing": None,
        "expired": (pki / "pki" / "expired.pem", pki / "pki" / "expired.key"),
        "foreign CA": (
            pki / "foreign" / "clients" / f"{site.a}.pem",
            pki / "foreign" / "clients" / f"{site.a}.key",
        ),
    }[cert]
    valid = (site.ca.dir / "clients" / f"{site.b}.pem", site.ca.dir / "clients" / f"{site.b}.key")
    port = broker.ports["mtls"]

    async def scenario() -> None:
        async with _good_clients(broker) as good:
            attempt = await asyncio.to_thread(
                tls_connack, port, site.ca.cert_path, files, connect_packet(site.a, username=site.a)
            )
            assert attempt == b""
            await _good_clients_work(broker, good)
        accepted = await asyncio.to_thread(
            tls_connack, port, site.ca.cert_path, valid, connect_packet(site.b, username=site.b)
        )
        assert accepted == b"\x20\x02\x00\x00"

    run(scenario())


def test_a_valid_client_certificate_connects_as_its_cn(broker: BrokerUnderTest) -> None:
    """B's certificate on the mTLS listener gives B's rights (and only B's): it gets its
    commands; the TLS listener works with B's password."""
    site = broker.site
    ca = site.ca
    assert ca is not None
    cert = (ca.dir / "clients" / f"{site.b}.pem", ca.dir / "clients" / f"{site.b}.key")

    async def scenario() -> None:
        async with (
            broker.client(site.b, listener="mtls", cert=cert, client_id=site.b) as b,
            broker.client(GATEWAY, listener="tls") as gateway,
        ):
            await b.subscribe(TOPICS.desired(site.b, 1), qos=1)
            await gateway.publish(TOPICS.desired(site.b, 1), b"over tls", qos=1)
            assert await _next(b, TOPICS.desired(site.b, 1)) == b"over tls"

    run(scenario())


def test_an_oversized_packet_closes_only_that_connection(broker: BrokerUnderTest) -> None:
    """A payload above the packet limit is not delivered; B and ingest keep working."""
    site = broker.site

    async def scenario() -> None:
        async with _good_clients(broker) as good:
            try:
                async with broker.client(site.a) as a:
                    await a.publish(TOPICS.meter(site.a), b"x" * (MAX_PACKET + 1), qos=1, timeout=3)
            except aiomqtt.MqttError:
                pass  # the broker closed A's connection: expected
            assert await drain(good.ingest, 1.0) == []
            await _good_clients_work(broker, good)

    run(scenario())


def test_malformed_and_empty_packets_disturb_nobody_else(broker: BrokerUnderTest) -> None:
    """Garbage, an empty packet, a truncated CONNECT and a reserved packet type each cost
    only their own connection."""
    port = broker.ports["tcp"]
    junk = [
        b"",
        b"\x00\x00",
        b"\xf0\x00",
        b"\xff" * 64,
        connect_packet("x", username="y", password="z")[:9],
        b"\x10\xff\xff\xff\xff\x7f",  # a remaining length beyond the protocol's maximum
    ]

    async def scenario() -> None:
        async with _good_clients(broker) as good:
            for packet in junk:
                sock, _ = raw_connect(port, packet, timeout=0.3)
                sock.close()
            await _good_clients_work(broker, good)

    run(scenario())


def test_a_silent_client_is_dropped_and_its_will_fires_within_one_and_a_half_keepalives(
    broker: BrokerUnderTest,
) -> None:
    """S connects with a 2 s keepalive and a will, then says nothing: ingest gets the will
    within 3 s (1.5 × keepalive) of S's last word, plus a little scheduling slack.

    Mosquitto 2.0 checks keepalives only every 6 s, in whole seconds (``keepalive__check``
    in its src/keepalive.c: ``last_keepalive_check + 5 < db.now_s``), so there the will may
    come up to 7 s later than 1.5 × keepalive. That is Mosquitto's limit, not a policy."""
    site = broker.site
    keepalive = 2

    async def scenario() -> float:
        async with broker.client(INGEST) as ingest:
            await ingest.subscribe(TOPICS.presence(site.s), qos=1)
            packet = connect_packet(
                site.s,
                username=site.s,
                password=site.passwords[site.s],
                keepalive=keepalive,
                will=(TOPICS.presence(site.s), b"offline"),
            )
            sock, connack = raw_connect(broker.ports["tcp"], packet)
            started = time.monotonic()
            try:
                assert connack[:2] == b"\x20\x02" and connack[3] == 0, connack
                assert await _next(ingest, TOPICS.presence(site.s), seconds=10) == b"offline"
                return time.monotonic() - started
            finally:
                sock.close()

    elapsed = asyncio.run(scenario())
    check_period = 7.0 if broker.kind == "mosquitto" else 0.0
    assert keepalive <= elapsed <= 1.5 * keepalive + check_period + 0.8, elapsed


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_retained_desired_states_survive_a_restart_byte_for_byte(
    broker: BrokerUnderTest, sig: signal.Signals
) -> None:
    """Every byte value (NUL, invalid UTF-8) comes back exactly after the broker restarts."""
    site = broker.site
    payloads = {1: bytes(range(256)), 2: b"\x00\xff\xfe" + uuid.uuid4().bytes}

    async def publish() -> None:
        async with broker.client(GATEWAY) as gateway:
            for outlet, payload in payloads.items():
                await gateway.publish(TOPICS.desired(site.b, outlet), payload, qos=1, retain=True)

    async def read_back() -> dict[int, bytes]:
        async with broker.client(site.b) as b:
            await b.subscribe(TOPICS.filter_for(TopicKind.DESIRED, site.b), qos=1)
            got = await drain(b, 1.5)
        return {int(topic.split("/")[-2]): payload for topic, payload in got}

    since = time.time()
    asyncio.run(publish())
    broker.wait_saved(since)
    broker.restart(sig)
    assert asyncio.run(read_back()) == payloads


def test_a_qos2_publish_closes_the_connection_on_either_broker(broker: BrokerUnderTest) -> None:
    """The wire contract has no QoS 2 (security review, finding 2): both brokers close the
    connection of a client that publishes with it, instead of holding the message."""
    site = broker.site
    sock, connack = raw_connect(
        broker.ports["tcp"],
        connect_packet(site.a, username=site.a, password=site.passwords[site.a]),
    )
    assert connack == bytes([0x20, 0x02, 0x00, 0x00])
    sock.sendall(publish_packet(1, TOPICS.meter(site.a), b"qos2", qos=2))
    sock.settimeout(10)
    try:
        answer = sock.recv(16)
    except ConnectionResetError:
        answer = b""
    sock.close()
    assert answer == b"", f"answered {answer!r} (a PUBREC would mean it kept the message)"

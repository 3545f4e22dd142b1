"""The edge agent process obeying (and refusing) desired states through the real broker.

The test plays the gateway: it publishes retained desired states the way the gateway does
and reads the edge's acknowledgements, events and retained reported state. A real ingest
runs beside it: its meter acks carry the cloud's time, the edge's only source for the
cloud clock. Time on the
edge runs ``SCALE`` times faster; the "cloud" times in the commands use the same scale.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import pytest

from kernel import mqtt
from kernel.settings import MqttUrl
from schemas.codec import decode, encode
from schemas.messages import (
    CommandAck,
    CommandOutcome,
    DesiredState,
    EdgeEvent,
    EdgeEventKind,
    Presence,
    ReportedState,
)
from schemas.topics import Topics
from tests.conftest import Installation
from tests.netcut import NetCut
from tests.procs import Proc

pytestmark = pytest.mark.processes

SCALE = 60.0


class Cloud:
    """Publishes desired states for one controller and collects what the edge says."""

    def __init__(
        self, client: aiomqtt.Client, topics: Topics, cid: str, now: Callable[[], float]
    ) -> None:
        self.client, self.topics, self.cid = client, topics, cid
        #: The installation's clock (SCALE times faster), which ingest's acks carry too.
        self.now = now
        self.acks: list[CommandAck] = []
        self.events: list[tuple[float, EdgeEvent]] = []  # (cloud time received, event)
        self.state: ReportedState | None = None
        self.online = asyncio.Event()  # set by a live (not retained) "online" presence

    async def send(
        self, outlet: int, on: bool, generation: int, *, minutes: float = 60, age_s: float = 0
    ) -> DesiredState:
        issued = self.now() - age_s
        want = DesiredState(
            controller_id=self.cid,
            outlet=outlet,
            on=on,
            generation=generation,
            charge_id=f"charge-{generation}" if on else None,
            end_at=issued + minutes * 60 if on else None,
            issued_at=issued,
        )
        await self.client.publish(
            self.topics.desired(self.cid, outlet), encode(want), qos=1, retain=True
        )
        return want

    async def listen(self) -> None:
        async for message in self.client.messages:
            payload = message.payload
            assert isinstance(payload, bytes)
            kind = message.topic.value.rsplit("/", 1)[1]
            if kind == "ack":
                self.acks.append(decode(CommandAck, payload))
            elif kind == "event":
                self.events.append((self.now(), decode(EdgeEvent, payload)))
            elif kind == "state":
                self.state = decode(ReportedState, payload)
            elif kind == "presence" and not message.retain and decode(Presence, payload).online:
                self.online.set()

    async def edge_online(self) -> None:
        """Wait for the edge to connect, so that commands reach it live, not retained."""
        await asyncio.wait_for(self.online.wait(), 20)
        self.online.clear()

    async def ack_for(self, outlet: int, generation: int, within: float = 15) -> CommandAck:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for ack in self.acks:
                if (ack.outlet, ack.generation) == (outlet, generation):
                    return ack
            await asyncio.sleep(0.02)
        raise AssertionError(f"no ack for generation {generation}; got {self.acks}")

    async def event(self, kind: EdgeEventKind, within: float = 15) -> tuple[float, EdgeEvent]:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            for received, event in self.events:
                if event.kind is kind:
                    return received, event
            await asyncio.sleep(0.02)
        raise AssertionError(f"no {kind} event; got {self.events}")

    async def breaker(self, outlet: int, on: bool, within: float = 10) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.state is not None and self.state.outlets[outlet - 1].breaker_on is on:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"outlet {outlet} breaker never reported {'ON' if on else 'OFF'}")


@asynccontextmanager
async def cloud_for(inst: Installation, cid: str) -> AsyncIterator[Cloud]:
    topics = Topics(inst.topic_root)
    async with mqtt.client(MqttUrl(inst.mqtt_url), identifier=f"cloud-{uuid.uuid4().hex[:6]}") as c:
        for topic in (
            topics.ack(cid),
            topics.event(cid),
            topics.state(cid),
            topics.presence(cid),
        ):
            await c.subscribe(topic, qos=1)
        inst.time_scale = SCALE
        inst.ingest().start()
        cloud = Cloud(c, topics, cid, inst.now)
        listener = asyncio.create_task(cloud.listen())
        try:
            yield cloud
        finally:
            listener.cancel()


def start_edge(inst: Installation, cid: str, **extra: Any) -> Proc:
    extra.setdefault("sample_interval_s", 1)
    extra.setdefault("sim_autoplay", "false")
    extra.setdefault("sim_cars", "3:40000:16,4:40000:25")
    inst.time_scale = SCALE
    return inst.edge(cid, minutes=None, **extra).start()


def test_commands_apply_once_in_order_and_replays_are_ignored(installation: Installation) -> None:
    cid = installation.controllers[0]

    async def scenario() -> None:
        async with cloud_for(installation, cid) as cloud:
            start_edge(installation, cid)
            await cloud.edge_online()
            await cloud.send(3, True, 1)
            ack = await cloud.ack_for(3, 1)
            assert ack[3:5] == (CommandOutcome.APPLIED, True)
            received, crossed = await cloud.event(EdgeEventKind.CURRENT_CROSSED, within=5)
            assert crossed.outlet == 3 and crossed.current_a > 10 and crossed.breaker_on
            assert crossed.detail == "rose through 10 A"
            assert received - ack.at < 60, "the fast path took over a (simulated) minute"
            await cloud.breaker(3, True)
            await cloud.send(3, False, 2)
            assert (await cloud.ack_for(3, 2))[3:5] == (CommandOutcome.APPLIED, False)
            cloud.acks.clear()
            await cloud.send(3, True, 1)  # a replay of the old ON
            replay = await cloud.ack_for(3, 1)
            assert replay.outcome is CommandOutcome.STALE and not replay.breaker_on
            await cloud.breaker(3, False)
            assert cloud.state is not None and cloud.state.outlets[2].applied_generation == 2

    asyncio.run(scenario())


def test_a_rebooted_edge_keeps_a_stopped_outlet_off_despite_a_stale_retained_on(
    installation: Installation,
) -> None:
    cid = installation.controllers[0]

    async def scenario() -> None:
        async with cloud_for(installation, cid) as cloud:
            edge = start_edge(installation, cid)
            await cloud.edge_online()
            await cloud.send(3, True, 1)
            await cloud.ack_for(3, 1)
            await cloud.send(3, False, 2)
            await cloud.ack_for(3, 2)
            edge.kill()
            await cloud.send(3, True, 1)  # the broker now holds a stale ON (say, a restore)
            cloud.acks.clear()
            cloud.state = None
            start_edge(installation, cid)
            ack = await cloud.ack_for(3, 1)
            assert ack.outcome is CommandOutcome.STALE and not ack.breaker_on
            await cloud.breaker(3, False)

    asyncio.run(scenario())


def test_the_edge_stops_at_end_at_by_its_own_timer_while_offline(
    installation: Installation,
) -> None:
    cid = installation.controllers[0]
    relay = NetCut(int(installation.mqtt_url.rsplit(":", 1)[1]))

    async def scenario() -> None:
        async with cloud_for(installation, cid) as cloud:
            start_edge(installation, cid, mqtt_url=f"mqtt://127.0.0.1:{relay.port}")
            await cloud.edge_online()
            want = await cloud.send(3, True, 1, minutes=10)  # 10 s of real time
            await cloud.ack_for(3, 1)
            relay.cut()  # the edge is on its own now
            await asyncio.sleep(12)
            relay.restore()
            received, event = await cloud.event(EdgeEventKind.BREAKER_SWITCHED, within=30)
            assert event.outlet == 3 and not event.breaker_on and event.detail == "end_at reached"
            assert want.end_at is not None
            assert abs(event.at - want.end_at) < 10, "stopped more than 10 s (cloud) off end_at"
            assert received > want.end_at + 60, "the event should have waited for the link"

    try:
        asyncio.run(scenario())
    finally:
        relay.close()


@pytest.mark.parametrize("skew", [-600, 600])
def test_a_skewed_edge_clock_still_stops_on_time(installation: Installation, skew: int) -> None:
    cid = installation.controllers[1]

    async def scenario() -> None:
        async with cloud_for(installation, cid) as cloud:
            start_edge(installation, cid, sim_clock_skew_s=skew)
            await cloud.edge_online()
            want = await cloud.send(3, True, 1, minutes=20)
            await cloud.ack_for(3, 1)
            received, _ = await cloud.event(EdgeEventKind.BREAKER_SWITCHED, within=40)
            assert want.end_at is not None
            # On the cloud's time, not the edge's own: following the skewed clock would put
            # the stop a whole skew (10 minutes) off. Nearer than half of it, since at 60×
            # a busy 2-core machine that holds the edge process back for a few real
            # seconds makes it minutes late (the former bound, 15 s, was a quarter of a
            # real second, and a loaded CI run missed it by 3.9 real seconds).
            off = received - want.end_at
            assert abs(off) < abs(skew) / 2, f"off by {off:.0f} s"

    asyncio.run(scenario())


def test_failed_breaker_overcurrent_and_late_commands(installation: Installation) -> None:
    cid = installation.controllers[2]

    async def scenario() -> None:
        async with cloud_for(installation, cid) as cloud:
            start_edge(installation, cid, sim_failed_breakers="5")
            await cloud.edge_online()
            await cloud.send(5, True, 1)
            ack = await cloud.ack_for(5, 1)
            assert ack.outcome is CommandOutcome.BREAKER_FAILED and not ack.breaker_on
            _, failed = await cloud.event(EdgeEventKind.BREAKER_FAILED)
            assert failed.outlet == 5

            await cloud.send(4, True, 1)  # the car on outlet 4 draws 25 A
            assert (await cloud.ack_for(4, 1)).outcome is CommandOutcome.APPLIED
            _, trip = await cloud.event(EdgeEventKind.OVERCURRENT_TRIP, within=20)
            assert trip.outlet == 4 and not trip.breaker_on and trip.current_a > 20
            await cloud.breaker(4, False)

            cloud.acks.clear()
            await cloud.send(3, True, 7, age_s=600)  # issued ten minutes ago
            late = await cloud.ack_for(3, 7)
            assert late.outcome is CommandOutcome.REFUSED_OFFLINE and not late.breaker_on

    asyncio.run(scenario())


SKEWS = [-86_400, -600, 600, 86_400]


def never_closed(edge: Proc, cloud: Cloud, outlet: int) -> None:
    assert all(not a.breaker_on for a in cloud.acks if a.outlet == outlet)
    assert f"outlet {outlet} breaker ON" not in edge.log(), "the breaker was closed"


@pytest.mark.parametrize("skew", SKEWS)
def test_a_fresh_edge_refuses_a_live_on_issued_hours_ago(
    installation: Installation, skew: int
) -> None:
    """Empty data directory, clock a day or 10 minutes off: a live ON issued 3 h ago (end
    still ahead) is refused, not judged by its own issue time; a fresh one then applies."""
    cid = installation.controllers[0]

    async def scenario() -> None:
        async with cloud_for(installation, cid) as cloud:
            edge = start_edge(installation, cid, sim_clock_skew_s=skew)
            await cloud.edge_online()
            await cloud.send(3, True, 1, minutes=240, age_s=3 * 3600)
            late = await cloud.ack_for(3, 1)
            assert late.outcome is CommandOutcome.REFUSED_OFFLINE
            never_closed(edge, cloud, 3)
            await cloud.send(3, True, 2)
            fresh = await cloud.ack_for(3, 2)
            assert (fresh.outcome, fresh.breaker_on) == (CommandOutcome.APPLIED, True)

    asyncio.run(scenario())


@pytest.mark.parametrize("skew", SKEWS)
def test_a_fresh_skewed_edge_does_not_revive_an_expired_retained_on(
    installation: Installation, skew: int
) -> None:
    """A retained ON whose end_at passed a minute ago, found by a fresh edge whose clock is
    10 minutes or a day off, is acknowledged as expired and never closes the breaker."""
    cid = installation.controllers[1]

    async def scenario() -> None:
        async with cloud_for(installation, cid) as cloud:
            await cloud.send(3, True, 1, minutes=30, age_s=31 * 60)  # end_at: a minute ago
            edge = start_edge(installation, cid, sim_clock_skew_s=skew)
            ack = await cloud.ack_for(3, 1)
            assert ack.outcome is CommandOutcome.EXPIRED
            await cloud.breaker(3, False)
            never_closed(edge, cloud, 3)

    asyncio.run(scenario())

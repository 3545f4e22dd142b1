"""Webhook delivery against a real HTTP receiver: signed, once, in order, through outages."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import psycopg
import pytest

from chargeline.outbox import enqueue
from cloud_gateway.clients import NewClient, add_client
from cloud_gateway.webhooks import Deliverer, verify
from tests.helpers import Receiver, query


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


PLAN = [
    ("ch-a", "charge.started"),
    ("ch-b", "charge.started"),
    ("ch-a", "charge.current_rise"),
    (None, "controller.offline"),
    ("ch-b", "charge.failed"),
    ("ch-a", "charge.stopped"),
]


def client_for(database: str, receiver: Receiver) -> NewClient:
    return add_client(database, "WeCharge", ["charges:read"], receiver.url)


async def add_events(database: str, client: NewClient, first: int, last: int) -> list[str]:
    """Enqueue PLAN[first:last]; each event's data says its place in PLAN."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        return [
            await enqueue(
                conn, client_id=client.client_id, kind=kind, data={"n": n}, charge_id=charge
            )
            for n, (charge, kind) in enumerate(PLAN[first:last], start=first)
        ]


async def until(check: object, within: float) -> None:
    deadline = time.monotonic() + within
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


def test_events_are_signed_delivered_once_and_in_order(database: str, receiver: Receiver) -> None:
    receiver.start()
    client = client_for(database, receiver)

    async def scenario() -> float:
        deliverer = Deliverer(database)
        task = asyncio.create_task(deliverer.run())
        await asyncio.sleep(0.3)  # listening
        start = time.monotonic()
        await add_events(database, client, 0, 1)
        await until(lambda: len(receiver.accepted) == 1, 5)
        latency = time.monotonic() - start
        await add_events(database, client, 1, len(PLAN))
        await until(lambda: len(receiver.accepted) == len(PLAN), 10)
        await asyncio.sleep(0.5)
        task.cancel()
        await deliverer.aclose()
        return latency

    latency = asyncio.run(scenario())
    assert latency < 1.0, f"first event took {latency:.2f} s to go out"
    bodies = receiver.bodies()
    assert len({b["id"] for b in bodies}) == len(PLAN) == len(bodies)
    for headers, body in receiver.accepted:
        assert verify(client.webhook_secret, headers, body)
        assert not verify("another-secret", headers, body)
    order = [(b["data"]["n"], b["type"]) for b in bodies if b["type"].startswith("charge.")]  # type: ignore[index, union-attr]
    a = [kind for n, kind in order if PLAN[n][0] == "ch-a"]  # type: ignore[index]
    assert a == ["charge.started", "charge.current_rise", "charge.stopped"]
    assert query(database, "SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL") == [
        (0,)
    ]


def test_receiver_down_then_failing_then_back_loses_nothing_across_restarts(
    database: str, receiver: Receiver
) -> None:
    client = client_for(database, receiver)  # the receiver is not even listening yet

    async def scenario() -> None:
        first = Deliverer(database, first_retry_s=0.2, max_retry_s=1.0)
        task = asyncio.create_task(first.run())
        await add_events(database, client, 0, 3)
        await until(lambda: first.failed_attempts >= 3, 10)
        task.cancel()  # the gateway goes down
        await first.aclose()

        receiver.status = 500
        receiver.start()
        second = Deliverer(database, first_retry_s=0.2, max_retry_s=1.0)
        task = asyncio.create_task(second.run())
        await add_events(database, client, 3, len(PLAN))
        await until(lambda: receiver.refused >= 4, 15)
        receiver.status = 200
        await until(lambda: len(receiver.accepted) == len(PLAN), 20)
        await asyncio.sleep(1.0)  # nothing more may arrive
        task.cancel()
        await second.aclose()

    asyncio.run(scenario())
    bodies = receiver.bodies()
    assert sorted(b["data"]["n"] for b in bodies) == list(range(len(PLAN)))  # type: ignore[index]
    ch_a = [b["type"] for b in bodies if PLAN[b["data"]["n"]][0] == "ch-a"]  # type: ignore[index]
    assert ch_a == ["charge.started", "charge.current_rise", "charge.stopped"]
    failed = query(database, "SELECT count(*) FROM webhook_outbox WHERE attempts > 1")
    assert failed[0][0] >= 3, "the outage should show in the attempt counts"
    assert query(database, "SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL") == [
        (0,)
    ]

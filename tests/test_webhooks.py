"""Webhook delivery against a real HTTP receiver: signed, once, in order, through outages."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import standardwebhooks

from chargeline.outbox import enqueue
from cloud_gateway.clients import NewClient, add_client, rotate_webhook_secret
from cloud_gateway.webhooks import Deliverer, new_secret, verify
from ingest import migrations
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


def event_data(kind: str, charge: str | None, n: int) -> dict[str, object]:
    """Valid data for ``kind`` (schemas/events.py) whose ``at`` (or ``since``) is ``n``."""
    if charge is None:
        return {
            "controller_id": "ctl-1",
            "online": kind.endswith("online"),
            "since": float(n),
            "reason": "disconnected",
            "outlet_ids": ["o-1"],
        }
    data: dict[str, object] = {
        "charge_id": charge,
        "outlet_id": "o-1",
        "state": "on",
        "at": float(n),
        "end_at": 2e9,
    }
    if kind == "charge.current_rise":
        data["current"] = "15.9 A"
    if kind in ("charge.stopped", "charge.failed"):
        data["reason"] = "partner stopped"
    if kind == "charge.stopped":
        data["energy_wh"] = 1.5
        data["meter"] = {"first": None, "last": None}
    return data


def place(body: object) -> int:
    """Where in PLAN an event came from."""
    data = body["data"]  # type: ignore[index]
    return int(data.get("at", data.get("since")))


async def add_events(database: str, client: NewClient, first: int, last: int) -> list[str]:
    """Enqueue PLAN[first:last]; each event's data says its place in PLAN."""
    async with await psycopg.AsyncConnection.connect(database) as conn:
        return [
            await enqueue(
                conn,
                client_id=client.client_id,
                kind=kind,
                data=event_data(kind, charge, n),
                charge_id=charge,
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
        assert client.webhook_secret.startswith("whsec_")
        # The Standard Webhooks reference library accepts it, as a partner's would ...
        assert standardwebhooks.Webhook(client.webhook_secret).verify(body, headers)
        assert verify(client.webhook_secret, headers, body)
        # ... and refuses it with any other secret.
        with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
            standardwebhooks.Webhook(new_secret()).verify(body, headers)
        assert not verify(new_secret(), headers, body)
    order = [(place(b), b["type"]) for b in bodies if b["type"].startswith("charge.")]  # type: ignore[index, union-attr]
    a = [kind for n, kind in order if PLAN[n][0] == "ch-a"]  # type: ignore[index]
    assert a == ["charge.started", "charge.current_rise", "charge.stopped"]
    assert query(database, "SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL") == [
        (0,)
    ]


def test_a_rotated_webhook_secret_signs_beside_the_old_one_until_the_overlap_ends(
    database: str, receiver: Receiver
) -> None:
    """During a rotation each webhook carries two signatures, so a partner verifying with
    either secret (with the standardwebhooks library) accepts it; afterwards only the new."""
    receiver.start()
    client = client_for(database, receiver)
    new = rotate_webhook_secret(database, client.client_id, overlap_s=3600)

    async def deliver(count: int) -> None:
        deliverer = Deliverer(database)
        task = asyncio.create_task(deliverer.run())
        await until(lambda: len(receiver.accepted) == count, 10)
        task.cancel()
        await deliverer.aclose()

    asyncio.run(add_events(database, client, 0, 1))
    asyncio.run(deliver(1))
    headers, body = receiver.accepted[0]
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (client.webhook_secret, new):
        assert standardwebhooks.Webhook(secret).verify(body, headers)
    with psycopg.connect(database) as conn:  # the overlap is over
        conn.execute("UPDATE oauth_clients SET previous_webhook_secret_until = now()")
    asyncio.run(add_events(database, client, 1, 2))
    asyncio.run(deliver(2))
    headers, body = receiver.accepted[1]
    assert standardwebhooks.Webhook(new).verify(body, headers)
    with pytest.raises(standardwebhooks.webhooks.WebhookVerificationError):
        standardwebhooks.Webhook(client.webhook_secret).verify(body, headers)


def test_an_existing_secret_keeps_its_key_in_the_standard_form(database: str) -> None:
    """Migration 0013: a pre-standard secret s becomes whsec_ + base64(s): same HMAC key."""
    client = add_client(database, "Old", ["charges:read"], "http://x/hook")
    old = "Zm9v-legacy_secret_value_0123456789abcdefghij"
    with psycopg.connect(database) as conn:
        conn.execute("UPDATE oauth_clients SET webhook_secret = %s", (old,))
        sql = (migrations_dir() / "0013_standard_webhooks_secrets.sql").read_text()
        conn.execute(sql.split("-- A rotated")[0])
    ((stored,),) = query(
        database, "SELECT webhook_secret FROM oauth_clients WHERE client_id = %s", client.client_id
    )
    assert stored == "whsec_" + base64.b64encode(old.encode()).decode()


def migrations_dir() -> Path:
    return Path(migrations.__file__).parent / "sql"


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
    assert sorted(place(b) for b in bodies) == list(range(len(PLAN)))
    ch_a = [b["type"] for b in bodies if PLAN[place(b)][0] == "ch-a"]  # type: ignore[index]
    assert ch_a == ["charge.started", "charge.current_rise", "charge.stopped"]
    failed = query(database, "SELECT count(*) FROM webhook_outbox WHERE attempts > 1")
    assert failed[0][0] >= 3, "the outage should show in the attempt counts"
    assert query(database, "SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL") == [
        (0,)
    ]

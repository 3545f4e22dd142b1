"""Webhook delivery against a real HTTP receiver: signed, once, in order, through outages."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import standardwebhooks

from charging.outbox import enqueue
from cloud_gateway.clients import NewClient, add_client, rotate_webhook_secret
from cloud_gateway.webhooks import Deliverer, new_secret, verify
from store import migrations
from tests.db import query
from tests.receiver import Receiver

pytestmark = pytest.mark.processes


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
    return add_client(database, "WeCharge", ["charges:read"], receiver.url, allow_private=True)


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


async def charge_started(
    conn: psycopg.AsyncConnection[Any], client_id: str, charge: str, n: int
) -> str:
    """Enqueue a ``charge.started`` event for ``charge`` (its data says ``n``)."""
    return await enqueue(
        conn,
        client_id=client_id,
        kind="charge.started",
        data=event_data("charge.started", charge, n),
        charge_id=charge,
    )


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
        deliverer = Deliverer(database, allow_private=True)
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

    def delivered(n: int) -> tuple[dict[str, str], bytes] | None:
        """The delivery of PLAN[n], if it came (a deliverer stopped between posting an
        event and recording it delivers that event again: both copies are signed alike)."""
        found = [(h, b) for h, b in receiver.accepted if place(json.loads(b)) == n]
        return found[-1] if found else None

    async def deliver(n: int) -> None:
        deliverer = Deliverer(database, allow_private=True)
        task = asyncio.create_task(deliverer.run())
        await until(lambda: delivered(n) is not None, 10)
        task.cancel()
        await deliverer.aclose()

    asyncio.run(add_events(database, client, 0, 1))
    asyncio.run(deliver(0))
    headers, body = receiver.accepted[0]
    assert len(headers["webhook-signature"].split(" ")) == 2
    for secret in (client.webhook_secret, new):
        assert standardwebhooks.Webhook(secret).verify(body, headers)
    with psycopg.connect(database) as conn:  # the overlap is over
        conn.execute("UPDATE oauth_clients SET previous_webhook_secret_until = now()")
    asyncio.run(add_events(database, client, 1, 2))
    asyncio.run(deliver(1))
    found = delivered(1)
    assert found is not None
    headers, body = found
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
        first = Deliverer(database, first_retry_s=0.2, max_retry_s=1.0, allow_private=True)
        task = asyncio.create_task(first.run())
        await add_events(database, client, 0, 3)
        await until(lambda: first.failed_attempts >= 3, 10)
        task.cancel()  # the gateway goes down
        await first.aclose()

        receiver.status = 500
        receiver.start()
        second = Deliverer(database, first_retry_s=0.2, max_retry_s=1.0, allow_private=True)
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


class Tarpit:
    """A webhook endpoint that accepts connections and never answers."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hooks"
        self.held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                self.held.append(self.server.accept()[0])

    def close(self) -> None:
        self.server.close()
        for sock in self.held:
            sock.close()


def test_a_hanging_endpoint_delays_only_its_own_clients_webhooks(
    database: str, receiver: Receiver
) -> None:
    """Finding 8 of the security review. One partner's endpoint hangs (a tarpit) with 300
    events queued for it; another partner's 20 webhooks, enqueued one at a time while
    the tarpit holds its connections, each arrive within a second."""
    receiver.start()
    tarpit = Tarpit()
    stuck = add_client(database, "Stuck", ["charges:read"], tarpit.url, allow_private=True)
    healthy = client_for(database, receiver)

    async def scenario() -> list[float]:
        async with await psycopg.AsyncConnection.connect(database) as conn:
            for n in range(300):
                await charge_started(conn, stuck.client_id, f"ch-{n}", n)
            await conn.commit()
        deliverer = Deliverer(database, timeout_s=5, allow_private=True)
        task = asyncio.create_task(deliverer.run())
        await until(lambda: len(tarpit.held) >= 4, 10)  # the tarpit holds its posts
        latencies = []
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as conn:
            for n in range(20):
                start = time.monotonic()
                await charge_started(conn, healthy.client_id, f"ok-{n}", n)
                await until(lambda n=n: len(receiver.accepted) > n, 30)
                latencies.append(time.monotonic() - start)
        assert len(tarpit.held) <= 4, "the stuck client's lane holds at most 4 posts"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await deliverer.aclose()
        return latencies

    try:
        latencies = asyncio.run(scenario())
    finally:
        tarpit.close()
    assert max(latencies) < 1.0, [round(x, 2) for x in latencies]
    waiting = query(
        database,
        "SELECT count(*) FROM webhook_outbox WHERE client_id = %s AND delivered_at IS NULL",
        stuck.client_id,
    )
    assert waiting[0][0] == 300, "the stuck client's events wait for retries, none lost"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hooks",
        "http://localhost/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://10.1.2.3/hooks",
        "http://[::1]/hooks",
        "http://[::ffff:127.0.0.1]/hooks",
        "http://[fe80::1]/hooks",
        "http://metadata.internal/hooks",
    ],
)
def test_webhook_urls_into_the_clouds_own_network_are_refused(database: str, url: str) -> None:
    """Finding 13 of the security review: the cloud fetches a partner's URL, so it must not
    point inside the cloud. Refused at registration unless the operator allows it."""
    with pytest.raises(ValueError, match="internal"):
        add_client(database, "Prober", ["charges:read"], url)
    assert add_client(database, "Lab", ["charges:read"], url, allow_private=True).client_id


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://user:pw@partner.example/hooks", "credentials"),
        ("ftp://partner.example/hooks", "http:// or https://"),
        ("https:///hooks", "no host"),
        ("https://partner.example:99999/hooks", "not a valid URL"),
    ],
)
def test_malformed_webhook_urls_are_refused_even_where_private_ones_are_allowed(
    database: str, url: str, why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        add_client(database, "Odd", ["charges:read"], url, allow_private=True)


def test_the_deliverer_posts_nothing_to_an_internal_address(
    database: str, receiver: Receiver
) -> None:
    """A URL accepted earlier (a closed-network setting since withdrawn, or a name whose
    DNS answer changed) is checked again before each delivery: nothing is posted, and the
    outbox says why."""
    receiver.start()
    client = client_for(database, receiver)  # registered while loopback was allowed

    async def scenario() -> None:
        deliverer = Deliverer(database, first_retry_s=0.2, max_retry_s=1.0)
        task = asyncio.create_task(deliverer.run())
        await add_events(database, client, 0, 1)
        await until(lambda: deliverer.failed_attempts >= 2, 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await deliverer.aclose()

    asyncio.run(scenario())
    assert receiver.accepted == []
    ((error,),) = query(database, "SELECT last_error FROM webhook_outbox")
    assert "internal address" in error


def test_the_deliverer_survives_losing_the_database(database: str, receiver: Receiver) -> None:
    """The database drops every connection of the deliverer (a restart, a failover): it
    reconnects and delivers what was added meanwhile."""
    receiver.start()
    client = client_for(database, receiver)

    async def scenario() -> None:
        deliverer = Deliverer(database, allow_private=True)
        task = asyncio.create_task(deliverer.run())
        await add_events(database, client, 0, 1)
        await until(lambda: len(receiver.accepted) == 1, 10)
        async with await psycopg.AsyncConnection.connect(database, autocommit=True) as admin:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        await add_events(database, client, 1, 3)
        await until(lambda: len(receiver.accepted) == 3, 20)
        assert not task.done(), "the deliverer must not have stopped"
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await deliverer.aclose()

    asyncio.run(scenario())
    assert sorted(place(b) for b in receiver.bodies()) == [0, 1, 2]

"""Commands as the gateway sends them: generation, audit row, retained publish, the edge's
answer on the fast path (AckWaiter) and in the audit trail (ingest)."""

from __future__ import annotations

import asyncio
import time

import aiomqtt
import psycopg
import pytest

from charging.commands import record
from cloud_gateway.commands import AckWaiter, publish
from kernel import mqtt
from kernel.settings import MqttUrl
from schemas.messages import CommandOutcome, DesiredState
from schemas.topics import Topics
from tests.conftest import Installation
from tests.db import query
from tests.procs import wait_for

pytestmark = pytest.mark.processes


def test_commands_are_numbered_published_answered_and_audited(installation: Installation) -> None:
    cid = installation.controllers[0]
    installation.time_scale = 1.0
    installation.ingest().start()
    installation.edge(cid, minutes=None, sample_interval_s=1, sim_autoplay="false").start()
    topics = Topics(installation.topic_root)

    async def scenario() -> list[tuple[DesiredState, float]]:
        waiter = AckWaiter(topics)
        sent: list[tuple[DesiredState, float]] = []
        async with mqtt.client(MqttUrl(installation.mqtt_url), identifier=f"gw-{cid}") as client:
            await client.subscribe(waiter.subscription, qos=1)
            listener = asyncio.create_task(_feed(client, waiter))
            await asyncio.sleep(2.0)  # the edge connects and subscribes
            async with await psycopg.AsyncConnection.connect(installation.database) as conn:
                for on in (True, False):
                    async with conn.transaction():
                        want = await record(
                            conn,
                            controller_id=cid,
                            outlet=2,
                            on=on,
                            charge_id="ch-1",
                            end_at=time.time() + 3600 if on else None,
                            issued_at=time.time(),
                            issued_by="cl_test",
                        )
                    answer = waiter.expect(cid, 2, want.generation)
                    start = time.monotonic()
                    await publish(client, topics, want)
                    ack = await asyncio.wait_for(answer, 10)
                    sent.append((want, time.monotonic() - start))
                    assert ack.outcome is CommandOutcome.APPLIED and ack.breaker_on is on
                # An old generation published again (a replay) is answered stale ...
                stale = waiter.expect(cid, 2, 1)
                await publish(client, topics, sent[0][0])
                assert (await asyncio.wait_for(stale, 10)).outcome is CommandOutcome.STALE
            listener.cancel()
        return sent

    sent = asyncio.run(scenario())
    assert [want.generation for want, _ in sent] == [1, 2]
    assert all(seconds < 2.0 for _, seconds in sent), sent
    # ... and the audit trail keeps the first answer for each generation.
    rows = wait_for(
        lambda: (
            r
            if (
                r := query(
                    installation.database,
                    "SELECT generation, turn_on, issued_by, outcome, breaker_on FROM commands"
                    " WHERE controller_id = %s ORDER BY generation",
                    cid,
                )
            )
            and all(row[3] is not None for row in r)
            else None
        ),
        timeout=15,
        what="acks recorded by ingest",
    )
    assert rows == [
        (1, True, "cl_test", "applied", True),
        (2, False, "cl_test", "applied", False),
    ]


async def _feed(client: aiomqtt.Client, waiter: AckWaiter) -> None:
    async for message in client.messages:
        payload = message.payload
        if isinstance(payload, bytes):
            waiter.deliver(message.topic.value, payload)

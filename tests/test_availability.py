"""The availability change feed: the pure decision (``charging.availability``), and the
publisher (``charging.availability_feed``) over a real database, fed by the triggers that
mark outlets as presence, charges and service change."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from charging import availability_feed, status
from charging.availability import Heard, decide
from cloud_gateway.clients import add_client
from schemas.messages import Presence
from store.registry import import_registry
from store.registry_file import ControllerEntry, OutletEntry, Registry, SiteEntry
from tests.db import query

pytestmark = pytest.mark.database

T0 = dt.datetime(2026, 12, 1, 12, tzinfo=dt.UTC)


def test_first_announcement_only_when_available() -> None:
    assert decide(False, None, T0, 30).send is False
    assert decide(True, None, T0, 30).send is True


def test_a_change_inside_the_gap_waits_for_its_end() -> None:
    heard = Heard(available=True, at=T0)
    soon = decide(False, heard, T0 + dt.timedelta(seconds=10), 30)
    assert (soon.send, soon.retry_at) == (False, T0 + dt.timedelta(seconds=30))
    later = decide(False, heard, T0 + dt.timedelta(seconds=30), 30)
    assert (later.send, later.retry_at) == (True, None)


@given(
    available=st.booleans(),
    heard=st.none() | st.builds(Heard, st.booleans(), st.just(T0)),
    after_s=st.floats(0, 120),
    gap_s=st.floats(0, 60),
)
def test_never_repeats_what_partners_heard_nor_sends_inside_the_gap(
    available: bool, heard: Heard | None, after_s: float, gap_s: float
) -> None:
    now = T0 + dt.timedelta(seconds=after_s)
    decision = decide(available, heard, now, gap_s)
    before = heard.available if heard else False
    if available == before:
        assert not decision.send and decision.retry_at is None
    elif heard is not None and now < T0 + dt.timedelta(seconds=gap_s):  # (to the µs)
        assert not decision.send and decision.retry_at is not None and decision.retry_at > now
    else:
        assert decision.send


def _registry(*, second_in_service: bool = False) -> Registry:
    return Registry(
        sites=[SiteEntry(id="hv", name="HV", contract_current_a=100, tariff_per_kwh=30)],
        controllers=[
            ControllerEntry(
                id="hv-ctl-1",
                site="hv",
                outlets=[
                    OutletEntry(number=1, outlet_id="HV-1"),
                    OutletEntry(number=2, outlet_id="HV-2", in_service=second_in_service),
                ],
            )
        ],
    )


def _events(database: str) -> list[dict[str, Any]]:
    rows = query(
        database,
        "SELECT body FROM webhook_outbox WHERE kind = 'outlet.availability' ORDER BY event_id",
    )
    return [r[0]["data"] for r in rows]


def test_presence_and_service_reach_subscribed_partners_coalesced(database: str) -> None:
    import_registry(database, _registry())
    # Two map apps hear it; a partner without the scope, or without a webhook, does not.
    maps = [
        add_client(database, f"map {i}", ["sites:read"], "https://maps.example/hook")
        for i in (1, 2)
    ]
    add_client(database, "charging only", ["charges:write"], "https://other.example/hook")
    add_client(database, "no webhook", ["sites:read"])

    async def presence(online: bool) -> None:
        async with await psycopg.AsyncConnection.connect(database) as conn, conn.transaction():
            p = Presence(controller_id="hv-ctl-1", online=online, since=time.time())
            await status.presence_changes(conn, [p])

    async def scenario() -> None:
        assert await publish(database, 30) == 0  # registered, never online: nothing to say
        await presence(True)
        assert await publish(database, 30) == 1  # HV-1 available; HV-2 is out of service
        events = _events(database)
        assert [(e["outlet_id"], e["available"], e["status"]) for e in events] == [
            ("HV-1", True, "available")
        ] * 2
        assert {e["site_id"] for e in events} == {"hv"}
        recipients = query(
            database,
            "SELECT client_id FROM webhook_outbox WHERE kind = 'outlet.availability' ORDER BY 1",
        )
        assert [r[0] for r in recipients] == sorted(m.client_id for m in maps)

        # Offline and back online before the next look: partners hear nothing.
        await presence(False)
        await presence(True)
        assert await publish(database, 0) == 0
        # Offline inside the gap: held, not lost.
        await presence(False)
        assert await publish(database, 3600) == 0
        assert query(database, "SELECT outlet_id FROM availability_changes") == [("HV-1",)]
        assert await publish(database, 0) == 0  # still held until the gap has passed
        with psycopg.connect(database) as conn:  # the gap passes
            conn.execute("UPDATE availability_changes SET changed_at = now()")
        assert await publish(database, 0) == 1
        assert [(e["available"], e["status"]) for e in _events(database)[-2:]] == [
            (False, "offline")
        ] * 2

    asyncio.run(scenario())

    # The operator puts HV-2 back in service while the controller is offline: it is
    # marked, but still unavailable, so nothing is said.
    import_registry(database, _registry(second_in_service=True))
    assert query(database, "SELECT outlet_id FROM availability_changes") == [("HV-2",)]
    assert asyncio.run(publish(database, 0)) == 0
    assert json.dumps(_events(database)).count('"HV-2"') == 0


async def publish(database: str, gap_s: float) -> int:
    """One pass of the feed, as the gateway's loop runs it."""
    async with await psycopg.AsyncConnection.connect(database) as conn, conn.transaction():
        return await availability_feed.publish(conn, min_gap_s=gap_s)

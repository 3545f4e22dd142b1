"""The partner app's three screens end to end (issue 17), through the public API of the
running stack (authorization server, gateway, webhooks, ingest, a simulated edge):
the charge history paged while new charges are created, a month's usage across a tariff
change equal to the sum of the charge records, and availability webhooks as a charge
starts and stops."""

from __future__ import annotations

import datetime as dt
import threading
import time
import urllib.parse
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from authlib.integrations.httpx_client import OAuth2Client

from store.registry import import_registry
from store.registry_file import TariffEntry
from tests.conftest import Installation, registry_for
from tests.partners import Partner, another_partner
from tests.procs import wait_for

pytestmark = pytest.mark.processes

SEEDED = 1000


def _seed_history(installation: Installation, client_id: str) -> None:
    """A thousand stopped charges of the partner's past on the controllers without an
    agent, two by two at the same instant (the cursor must break ties)."""
    quiet = installation.controllers[1:]
    with psycopg.connect(installation.database) as conn:
        conn.execute(
            "INSERT INTO charges (charge_id, partner_charge_id, client_id, outlet_id,"
            " controller_id, outlet_no, request_sha256, state, start_generation, end_at,"
            " requested_at, started_at, stopped_at, stop_reason, energy_wh, tariff_per_kwh,"
            " currency)"
            " SELECT 'seed-' || i, 'old-' || lpad(i::text, 4, '0'), %s,"
            "  c || '-' || (1 + i %% 8), c, 1 + i %% 8, '\\x00', 'stopped', i, now(), t, t,"
            "  t + interval '30 minutes', 'partner stopped', 1000 + i, 30, 'JPY'"
            " FROM generate_series(0, %s) i,"
            "  LATERAL (SELECT (%s::text[])[1 + i %% 2] AS c,"
            "   now() - make_interval(mins => 40 * (1 + i / 2)) AS t) x",
            (client_id, SEEDED - 1, quiet),
        )


def _all_pages(partner: Partner, query: dict[str, Any]) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    params = dict(query)
    while True:
        answer = partner.get(f"/v1/charges?{urllib.parse.urlencode(params)}")
        assert answer.status_code == 200, answer.text
        page = answer.json()
        assert len(page["charges"]) <= params.get("limit", 20)
        seen += page["charges"]
        if page["next_cursor"] is None:
            return seen
        params["cursor"] = page["next_cursor"]


def test_history_pages_through_a_thousand_charges_while_new_ones_start(
    partner: Partner, installation: Installation
) -> None:
    _seed_history(installation, partner.client.client_id)
    stop = threading.Event()
    created: list[str] = []
    unexpected: list[str] = []

    def keep_charging() -> None:  # a resident after another, on the live controller
        with OAuth2Client(
            partner.client.client_id, partner.client.client_secret, token_endpoint=partner.token_url
        ) as oauth:
            oauth.fetch_token(grant_type="client_credentials")
            n = 0
            while not stop.is_set():
                n += 1
                outlet = f"{installation.controllers[0]}-{1 + n % 8}"
                started = oauth.post(
                    f"{partner.api}/v1/charges", json={"outlet_id": outlet, "charge_id": f"new-{n}"}
                )
                if started.status_code in (201, 202):
                    created.append(f"new-{n}")
                    oauth.post(f"{partner.api}/v1/charges/new-{n}/stop")
                elif started.status_code != 409:  # busy: its last charge is still stopping
                    unexpected.append(started.text)

    worker = threading.Thread(target=keep_charging)
    worker.start()
    try:
        wait_for(lambda: len(created) >= 2, timeout=20, what="new charges")
        seen = _all_pages(partner, {"limit": 37})
    finally:
        stop.set()
        worker.join()
    ids = [c["charge_id"] for c in seen]
    assert len(ids) == len(set(ids)), "a charge was repeated"
    old = {f"old-{i:04d}" for i in range(SEEDED)}
    assert old <= set(ids), f"skipped: {sorted(old - set(ids))[:5]}"
    times = [dt.datetime.fromisoformat(c["requested_at"]) for c in seen]
    assert times == sorted(times, reverse=True), "newest first"
    assert created and not unexpected, unexpected

    # Filters: a state, an outlet, a site, a time window; each page still newest first.
    outlet = f"{installation.controllers[1]}-3"
    on_outlet = _all_pages(partner, {"outlet_id": outlet, "state": "stopped", "limit": 50})
    assert {(c["outlet_id"], c["state"]) for c in on_outlet} == {(outlet, "stopped")}
    assert len(on_outlet) == sum(1 for c in seen if c["outlet_id"] == outlet)
    assert len(_all_pages(partner, {"site_id": "test-site", "limit": 100})) >= SEEDED
    assert _all_pages(partner, {"site_id": "elsewhere"}) == []
    window = {"requested_from": times[500].isoformat(), "requested_before": times[100].isoformat()}
    inside = [c["charge_id"] for c in _all_pages(partner, {**window, "limit": 100})]
    assert inside == [
        c["charge_id"] for c, t in zip(seen, times, strict=True) if times[500] <= t < times[100]
    ]

    with another_partner(partner, installation) as rival:
        assert rival.get("/v1/charges").json() == {"charges": [], "next_cursor": None}
    bad = partner.get("/v1/charges?cursor=bm90LWEtY3Vyc29y")
    assert bad.status_code == 422 and "cursor" in bad.json()["detail"]


def _charge(partner: Partner, outlet: str, charge_id: str) -> dict[str, Any]:
    """Start, let the car draw for a few (simulated) minutes, stop; the charge record."""
    started = partner.post("/v1/charges", {"outlet_id": outlet, "charge_id": charge_id})
    assert started.status_code == 201, started.text
    wait_for(
        lambda: partner.event("charge.current_rise", charge_id=charge_id),
        timeout=20,
        what=f"{charge_id} drawing",
    )
    time.sleep(3)
    assert partner.post(f"/v1/charges/{charge_id}/stop").status_code == 200
    wait_for(
        lambda: partner.event("charge.stopped", charge_id=charge_id),
        timeout=20,
        what=f"{charge_id} stopped",
    )
    record: dict[str, Any] = partner.get(f"/v1/charges/{charge_id}").json()
    return record


def test_monthly_usage_is_the_sum_of_the_records_across_a_tariff_change(
    partner: Partner, installation: Installation
) -> None:
    first = _charge(partner, f"{installation.controllers[0]}-3", "bill-1")
    # The price changes from now on (the registry keeps the old one for its period).
    registry = registry_for(installation.controllers, 8)
    site = registry.sites[0].model_copy(
        update={"tariffs": [TariffEntry(valid_from=dt.datetime.now(dt.UTC), per_kwh=45.5)]}
    )
    summary = import_registry(installation.database, registry.model_copy(update={"sites": [site]}))
    assert summary.counts["tariffs added"] == 1
    second = _charge(partner, f"{installation.controllers[0]}-5", "bill-2")
    assert (first["tariff_per_kwh"], second["tariff_per_kwh"]) == (30, 45.5)
    for record in (first, second):
        assert record["energy_kwh"] > 0
        price = Decimal(str(record["tariff_per_kwh"]))
        fee = (Decimal(str(record["energy_kwh"])) * price).quantize(
            Decimal("0.01"), "ROUND_HALF_UP"
        )
        assert Decimal(str(record["fee"])) == fee

    month = first["stopped_at"][:7]  # the test site's time zone is UTC
    records = [
        c
        for c in partner.get("/v1/charges?state=stopped&limit=100").json()["charges"]
        if c["stopped_at"][:7] == month
    ]
    usage = partner.get(f"/v1/usage?month={month}")
    assert usage.status_code == 200, usage.text
    body = usage.json()

    def total(items: list[dict[str, Any]], key: str) -> Decimal:
        return sum((Decimal(str(c[key])) for c in items), Decimal(0))

    (jpy,) = body["totals"]
    assert (jpy["currency"], jpy["charges"]) == ("JPY", len(records))
    assert Decimal(str(jpy["fee"])) == total(records, "fee")  # to the cent
    assert Decimal(str(jpy["energy_kwh"])) == total(records, "energy_kwh")
    (site_usage,) = body["sites"]
    assert (site_usage["site_id"], site_usage["fee"]) == ("test-site", jpy["fee"])
    by_outlet = {o["outlet_id"]: o for o in site_usage["outlets"]}
    for record in records:
        mine = [c for c in records if c["outlet_id"] == record["outlet_id"]]
        assert Decimal(str(by_outlet[record["outlet_id"]]["fee"])) == total(mine, "fee")
    one = partner.get(f"/v1/outlets/{first['outlet_id']}/usage?month={month}").json()
    assert (one["fee"], one["tariff_per_kwh"]) == (first["fee"], 45.5)  # the price now

    other = partner.get("/v1/usage?month=1999-01").json()
    assert other == {"month": "1999-01", "totals": [], "sites": []}


@pytest.mark.gateway(availability_min_gap_s=1)
def test_availability_webhooks_as_a_charge_starts_and_stops(
    partner: Partner, installation: Installation
) -> None:
    outlet = f"{installation.controllers[0]}-4"

    def availability() -> list[tuple[bool, str]]:
        events = partner.events(
            lambda b: b["type"] == "outlet.availability" and b["data"]["outlet_id"] == outlet
        )
        return [(e["data"]["available"], e["data"]["status"]) for e in events]

    wait_for(lambda: availability() == [(True, "available")], timeout=20, what="online: available")
    assert (
        partner.post("/v1/charges", {"outlet_id": outlet, "charge_id": "av-1"}).status_code == 201
    )
    wait_for(
        lambda: availability()[1:] == [(False, "charging")], timeout=20, what="charging: taken"
    )
    site = partner.get("/v1/sites/test-site").json()
    assert {o["outlet_id"]: o["status"] for o in site["outlets"]}[outlet] == "charging"
    free = partner.get("/v1/sites?available=true").json()["sites"][0]["outlets"]
    assert outlet not in [o["outlet_id"] for o in free]
    assert len(free) == 7  # the live controller's other outlets

    assert partner.post("/v1/charges/av-1/stop").status_code == 200
    wait_for(lambda: availability()[2:] == [(True, "available")], timeout=20, what="stopped: free")
    ats = [
        e["data"]["at"]
        for e in partner.events(
            lambda b: b["type"] == "outlet.availability" and b["data"]["outlet_id"] == outlet
        )
    ]
    assert ats == sorted(ats)  # (the rate limit is tested in tests/test_availability.py)

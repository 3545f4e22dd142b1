"""The partner API in-process (tier: database): every answer a partner can get without a
controller, through the real authorization server and gateway apps over a real database,
in milliseconds instead of process start-ups."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
import pytest

from cloud_gateway import cursors
from cloud_gateway.clients import add_client
from store.registry import import_registry
from tests.conftest import registry_for
from tests.inprocess import as_partner, problem

pytestmark = pytest.mark.database

Calls = Callable[[httpx2.AsyncClient, dict[str, str], str], Awaitable[None]]


def with_cloud(database: str, tmp_path: Path, scopes: list[str], calls: Calls) -> None:
    """Register a controller (never online) and a partner with ``scopes``; run ``calls``
    with the API client, the partner's auth header and an outlet id."""
    cid = f"c{uuid.uuid4().hex[:6]}"
    import_registry(database, registry_for([cid], 2))
    partner = add_client(database, "in-process partner", scopes)

    async def main() -> None:
        async with as_partner(database, tmp_path, partner) as (partner_api, bearer):
            await calls(partner_api, bearer, f"{cid}-1")

    asyncio.run(main())


ALL = ["charges:write", "charges:read", "outlets:read", "usage:read"]


def test_status_of_a_known_and_an_unknown_outlet(database: str, tmp_path: Path) -> None:
    async def calls(api: httpx2.AsyncClient, bearer: dict[str, str], outlet: str) -> None:
        known = await api.get(f"/v1/outlets/{outlet}/status", headers=bearer)
        assert known.status_code == 200, known.text
        body = known.json()
        assert body["outlet_id"] == outlet
        assert (body["controller_online"], body["charging"], body["measured_at"]) == (
            False,
            False,
            None,
        )
        unknown = await api.get("/v1/outlets/nowhere-9/status", headers=bearer)
        problem(unknown, 404, "unknown-outlet")

    with_cloud(database, tmp_path, ALL, calls)


def test_a_start_on_an_offline_controller_is_refused_and_records_nothing(
    database: str, tmp_path: Path
) -> None:
    async def calls(api: httpx2.AsyncClient, bearer: dict[str, str], outlet: str) -> None:
        start = await api.post(
            "/v1/charges", json={"outlet_id": outlet, "charge_id": "wc-1"}, headers=bearer
        )
        body = problem(start, 503, "controller-offline")
        assert outlet in str(body["detail"])
        problem(await api.get("/v1/charges/wc-1", headers=bearer), 404, "unknown-charge")

    with_cloud(database, tmp_path, ALL, calls)


def test_tokens_missing_wrong_or_short_of_scope(database: str, tmp_path: Path) -> None:
    async def calls(api: httpx2.AsyncClient, bearer: dict[str, str], outlet: str) -> None:
        none = await api.get(f"/v1/outlets/{outlet}/status")
        problem(none, 401, "invalid-token")
        assert none.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        forged = await api.get(
            f"/v1/outlets/{outlet}/status", headers={"authorization": "Bearer e30.e30.AAAA"}
        )
        problem(forged, 401, "invalid-token")
        short = await api.post(
            "/v1/charges", json={"outlet_id": outlet, "charge_id": "wc-2"}, headers=bearer
        )
        problem(short, 403, "insufficient-scope")
        assert short.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'

    with_cloud(database, tmp_path, ["outlets:read"], calls)


def test_usage_of_a_month_without_charges_and_a_malformed_month(
    database: str, tmp_path: Path
) -> None:
    async def calls(api: httpx2.AsyncClient, bearer: dict[str, str], outlet: str) -> None:
        usage = await api.get(f"/v1/outlets/{outlet}/usage?month=2026-11", headers=bearer)
        assert usage.status_code == 200, usage.text
        body = usage.json()
        assert (body["charges"], body["energy_kwh"], body["fee"]) == (0, 0.0, 0.0)
        assert body["tariff_per_kwh"] == 30.0
        bad = await api.get(f"/v1/outlets/{outlet}/usage?month=2026-13", headers=bearer)
        problem(bad, 422, "invalid-request")

    with_cloud(database, tmp_path, ALL, calls)


def test_unknown_paths_wrong_methods_and_oversized_bodies(database: str, tmp_path: Path) -> None:
    async def calls(api: httpx2.AsyncClient, bearer: dict[str, str], outlet: str) -> None:
        problem(await api.get("/v2/nothing", headers=bearer), 404, "not-found")
        wrong = await api.delete("/v1/charges", headers=bearer)
        problem(wrong, 405, "method-not-allowed")
        assert wrong.headers["allow"] == "POST"
        big = await api.post(
            "/v1/charges",
            content=b"{" + b" " * 20_000 + b"}",
            headers={**bearer, "content-type": "application/json"},
        )
        problem(big, 413, "body-too-large")
        invalid = await api.post("/v1/charges", json={"outlet_id": outlet}, headers=bearer)
        assert "charge_id" in str(problem(invalid, 422, "invalid-request")["detail"])

    with_cloud(database, tmp_path, ALL, calls)


def test_history_and_usage_of_a_client_without_charges_and_bad_queries(
    database: str, tmp_path: Path
) -> None:
    async def calls(api: httpx2.AsyncClient, bearer: dict[str, str], outlet: str) -> None:
        empty = await api.get("/v1/charges", headers=bearer)
        assert empty.status_code == 200, empty.text
        assert empty.json() == {"charges": [], "next_cursor": None}
        # The last month a date can name, and the first: empty, not a failure.
        for month in ("9999-12", "1000-01"):
            usage = await api.get(f"/v1/usage?month={month}", headers=bearer)
            assert usage.json() == {"month": month, "totals": [], "sites": []}, usage.text
            one = await api.get(f"/v1/outlets/{outlet}/usage?month={month}", headers=bearer)
            assert one.status_code == 200 and one.json()["fee"] == 0, one.text
        far = cursors.encode([10**20, "wc-1"])  # an instant no page ended at
        for query, says in [
            (f"cursor={far}", "cursor: not a cursor this listing gave"),
            (f"cursor={cursors.encode(['s1'])}", "cursor: not a cursor this listing gave"),
            ("cursor=" + cursors.encode([0, "wc\x00"]), "cursor: not a cursor this listing gave"),
            ("state=charging", "state: Input should be"),
            ("requested_from=2026-12-01T00:00:00", "requested_from: Input should have timezone"),
            ("outlet_id=%20x", "outlet_id: String should match pattern"),
            ("limit=101", "limit: Input should be less than or equal to 100"),
            ("site=x", "site: Extra inputs are not permitted"),
        ]:
            answer = await api.get(f"/v1/charges?{query}", headers=bearer)
            body = problem(answer, 422, "invalid-request")
            assert says in str(body["detail"]), (query, body)
        body = problem(await api.get("/v1/usage", headers=bearer), 422, "invalid-request")
        assert "month: Field required" in str(body["detail"])

    with_cloud(database, tmp_path, ALL, calls)


def test_a_start_on_an_outlet_out_of_service_is_refused(database: str, tmp_path: Path) -> None:
    async def calls(api: httpx2.AsyncClient, bearer: dict[str, str], outlet: str) -> None:
        cid = outlet.rsplit("-", 1)[0]
        registry = registry_for([cid], 2)
        (controller,) = registry.controllers
        outlets = [
            o.model_copy(update={"in_service": o.outlet_id != outlet}) for o in controller.outlets
        ]
        controller = controller.model_copy(update={"outlets": outlets})
        summary = import_registry(
            database, registry.model_copy(update={"controllers": [controller]})
        )
        assert summary.counts["outlets updated"] == 1
        start = await api.post(
            "/v1/charges", json={"outlet_id": outlet, "charge_id": "wc-9"}, headers=bearer
        )
        body = problem(start, 409, "outlet-out-of-service")
        assert outlet in str(body["detail"])
        problem(await api.get("/v1/charges/wc-9", headers=bearer), 404, "unknown-charge")

    with_cloud(database, tmp_path, ALL, calls)

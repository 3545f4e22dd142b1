"""Finding places to charge through the partner API (issue 17), in-process over a real
database: ``GET /v1/sites`` near a point (nearest first, paged), by availability now and by
kind, and ``GET /v1/sites/{site_id}``. Controllers come online through the same code
ingest runs when their presence arrives (``charging.status.presence_changes``)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import psycopg
import pytest

from charging import status
from cloud_gateway import cursors
from cloud_gateway.clients import add_client
from cloud_gateway.places import KM_PER_DEGREE, Point, distance_km
from schemas.messages import Presence
from store.registry import import_registry
from store.registry_file import ControllerEntry, OutletEntry, Registry, SiteEntry
from tests.inprocess import as_partner, problem

pytestmark = pytest.mark.database

TOKYO = Point(35.6812, 139.7671)

Calls = Callable[[httpx2.AsyncClient, dict[str, str]], Awaitable[None]]


def site(site_id: str, north_km: float | None, **extra: Any) -> SiteEntry:
    """A site ``north_km`` due north of Tokyo Station (south if negative); None: nowhere."""
    where = {}
    if north_km is not None:
        where = {
            "latitude": TOKYO.latitude + north_km / KM_PER_DEGREE,
            "longitude": TOKYO.longitude,
        }
    return SiteEntry(
        id=site_id,
        name=site_id.title(),
        contract_current_a=100,
        tariff_per_kwh=30,
        **where,
        **extra,
    )


def controller(cid: str, site_id: str, *, out_of_service: tuple[int, ...] = ()) -> ControllerEntry:
    return ControllerEntry(
        id=cid,
        site=site_id,
        outlets=[
            OutletEntry(number=n, outlet_id=f"{cid}-{n}", in_service=n not in out_of_service)
            for n in (1, 2, 3)
        ],
    )


def with_partner(database: str, tmp_path: Path, scopes: list[str], calls: Calls) -> None:
    partner = add_client(database, "map app", scopes)

    async def main() -> None:
        async with as_partner(database, tmp_path, partner) as (api, bearer):
            await calls(api, bearer)

    asyncio.run(main())


async def online(database: str, *controllers: str) -> None:
    async with await psycopg.AsyncConnection.connect(database) as conn, conn.transaction():
        await status.presence_changes(
            conn, [Presence(controller_id=c, online=True, since=time.time()) for c in controllers]
        )


async def pages(api: httpx2.AsyncClient, bearer: dict[str, str], query: str) -> list[Any]:
    """Every site of a search, following next_cursor."""
    found: list[Any] = []
    cursor = ""
    while True:
        answer = await api.get(f"/v1/sites?{query}{cursor}", headers=bearer)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        found += body["sites"]
        if body["next_cursor"] is None:
            return found
        cursor = f"&cursor={body['next_cursor']}"


def test_sites_near_a_point_nearest_first_paged_and_filtered(database: str, tmp_path: Path) -> None:
    import_registry(
        database,
        Registry(
            sites=[
                site("asakusa", 8.0, address="2-3-1 Asakusa", opening_hours="Mo-Fr 07:00-22:00"),
                site("ginza", -3.0, access_notes="B2, bays 1-3"),
                site("marunouchi", 0.5),
                site("saitama", 30.0),
                site("nowhere", None),
            ],
            controllers=[
                controller("ctl-asakusa", "asakusa"),
                controller("ctl-ginza", "ginza", out_of_service=(2,)),
                controller("ctl-marunouchi", "marunouchi"),
                controller("ctl-saitama", "saitama"),
                controller("ctl-nowhere", "nowhere"),
            ],
        ),
    )

    async def calls(api: httpx2.AsyncClient, bearer: dict[str, str]) -> None:
        near = f"near={TOKYO.latitude},{TOKYO.longitude}"
        within_10 = await pages(api, bearer, f"{near}&radius_km=10")
        assert [s["site_id"] for s in within_10] == ["marunouchi", "ginza", "asakusa"]
        assert [round(s["distance_km"], 2) for s in within_10] == [0.5, 3.0, 8.0]
        first = within_10[2]
        assert (first["address"], first["opening_hours"]) == ("2-3-1 Asakusa", "Mo-Fr 07:00-22:00")
        assert first["tariff_per_kwh"] == 30.0 and first["currency"] == "JPY"

        one_by_one = await pages(api, bearer, f"{near}&radius_km=50&limit=1")
        assert [s["site_id"] for s in one_by_one] == [
            "marunouchi",
            "ginza",
            "asakusa",
            "saitama",
        ]
        everywhere = await pages(api, bearer, "limit=2")
        assert [s["site_id"] for s in everywhere] == sorted(
            ["asakusa", "ginza", "marunouchi", "saitama", "nowhere"]
        )
        assert all(s["distance_km"] is None for s in everywhere)

        # Nobody online yet: nothing available, every outlet listed with why.
        assert await pages(api, bearer, f"{near}&available=true") == []
        ginza = next(s for s in within_10 if s["site_id"] == "ginza")
        assert [(o["outlet_id"], o["status"]) for o in ginza["outlets"]] == [
            ("ctl-ginza-1", "offline"),
            ("ctl-ginza-2", "out_of_service"),
            ("ctl-ginza-3", "offline"),
        ]

        await online(database, "ctl-ginza", "ctl-saitama")
        available = await pages(api, bearer, f"{near}&radius_km=50&available=true")
        assert [s["site_id"] for s in available] == ["ginza", "saitama"]
        assert [o["outlet_id"] for o in available[0]["outlets"]] == ["ctl-ginza-1", "ctl-ginza-3"]
        assert all(o["available"] and o["status"] == "available" for o in available[0]["outlets"])
        assert (available[0]["available_outlets"], available[1]["available_outlets"]) == (2, 3)

        assert len(await pages(api, bearer, "kind=ac_outlet")) == 5
        assert await pages(api, bearer, "kind=ocpp_dc") == []

        detail = await api.get("/v1/sites/ginza", headers=bearer)
        assert detail.status_code == 200, detail.text
        body = detail.json()
        assert body["access_notes"] == "B2, bays 1-3" and body["distance_km"] is None
        assert [(o["status"], o["measured_at"]) for o in body["outlets"]] == [
            ("available", None),
            ("out_of_service", None),
            ("available", None),
        ]
        problem(await api.get("/v1/sites/atlantis", headers=bearer), 404, "unknown-site")
        problem(await api.get("/v1/sites/%20", headers=bearer), 404, "unknown-site")

    with_partner(database, tmp_path, ["sites:read"], calls)


def test_bad_searches_get_a_precise_422(database: str, tmp_path: Path) -> None:
    import_registry(database, Registry(sites=[site("ginza", -3.0)]))

    async def calls(api: httpx2.AsyncClient, bearer: dict[str, str]) -> None:
        for query, says in [
            ("near=95,139", "latitude must be within ±90"),
            ("near=tokyo", "near: String should match pattern"),
            ("radius_km=5", "radius_km needs near"),
            ("near=35,139&radius_km=500", "radius_km: Input should be less than or equal to 200"),
            ("limit=0", "limit: Input should be greater than or equal to 1"),
            ("cursor=AAAA", "cursor: not a cursor this listing gave"),
            ("cursor=" + cursors.encode(["a\x00"]), "cursor: not a cursor this listing gave"),
            (f"near=35,139&cursor={cursors.encode(['a'])}", "cursor: not a cursor this listing"),
            ("kind=tesla", "kind: Input should be 'ac_outlet', 'ocpp_ac' or 'ocpp_dc'"),
            ("nera=35,139", "nera: Extra inputs are not permitted"),
            ("limit=1&limit=2", "limit: give each parameter once"),
        ]:
            body = problem(
                await api.get(f"/v1/sites?{query}", headers=bearer), 422, "invalid-request"
            )
            assert says in str(body["detail"]), (query, body)

    with_partner(database, tmp_path, ["sites:read"], calls)


def test_sites_need_the_sites_read_scope(database: str, tmp_path: Path) -> None:
    async def calls(api: httpx2.AsyncClient, bearer: dict[str, str]) -> None:
        problem(await api.get("/v1/sites", headers=bearer), 403, "insufficient-scope")
        problem(await api.get("/v1/sites/ginza", headers=bearer), 403, "insufficient-scope")

    with_partner(database, tmp_path, ["charges:read"], calls)


def test_the_search_finds_what_a_scan_of_every_site_finds(database: str, tmp_path: Path) -> None:
    """Random sites, some near the antimeridian and the poles; for random circles the API
    returns exactly the sites a scan within the radius finds, in distance order."""
    rng = random.Random(17)
    spots = [Point(rng.uniform(-60, 60), rng.uniform(-180, 180)) for _ in range(150)]
    spots += [
        Point(rng.uniform(-30, 30), rng.choice([-1, 1]) * rng.uniform(178, 180)) for _ in range(40)
    ]
    spots += [
        Point(rng.choice([-1, 1]) * rng.uniform(88, 90), rng.uniform(-180, 180)) for _ in range(30)
    ]
    import_registry(
        database,
        Registry(
            sites=[
                SiteEntry(
                    id=f"s{i:03d}",
                    name=f"Site {i}",
                    contract_current_a=100,
                    tariff_per_kwh=30,
                    latitude=p.latitude,
                    longitude=p.longitude,
                )
                for i, p in enumerate(spots)
            ]
        ),
    )
    circles = [(spots[rng.randrange(len(spots))], rng.choice([5.0, 200.0])) for _ in range(12)]
    circles += [(Point(0.0, 179.9), 200.0), (Point(89.5, 10.0), 200.0), (Point(-89.9, -170), 150.0)]

    async def calls(api: httpx2.AsyncClient, bearer: dict[str, str]) -> None:
        for centre, radius in circles:
            near = f"near={centre.latitude:.6f},{centre.longitude:.6f}&radius_km={radius}"
            found = await pages(api, bearer, near + "&limit=7")
            asked = Point(round(centre.latitude, 6), round(centre.longitude, 6))
            scan = sorted(
                (distance_km(asked, p), f"s{i:03d}")
                for i, p in enumerate(spots)
                if distance_km(asked, p) <= radius - 1e-6
            )
            assert [s["site_id"] for s in found][: len(scan)] == [sid for _, sid in scan]
            assert len(found) - len(scan) <= 1  # one exactly at the rim, rounded either way

    with_partner(database, tmp_path, ["sites:read"], calls)

"""Which month a charge counts in: the month it stopped in, in its site's time zone, read
the same whatever the database session's time zone."""

from __future__ import annotations

import asyncio
import datetime as dt

import psycopg
import pytest

from cloud_gateway import repository
from cloud_gateway.clients import add_client
from store.registry import import_registry
from store.registry_file import ControllerEntry, OutletEntry, Registry, SiteEntry

pytestmark = pytest.mark.database

STOPS = {  # charge → when it stopped (UTC); the site is at UTC−12
    "late-nov": dt.datetime(2026, 12, 1, 11, 30, tzinfo=dt.UTC),  # 30 Nov, 23:30 there
    "early-dec": dt.datetime(2026, 12, 1, 12, 30, tzinfo=dt.UTC),  # 1 Dec, 00:30 there
    "first-nov": dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC),  # 1 Nov, 00:00 there
}


@pytest.mark.parametrize("session_zone", ["UTC", "Pacific/Kiritimati", "Etc/GMT+12"])
def test_a_charge_counts_in_the_month_it_stopped_there(database: str, session_zone: str) -> None:
    import_registry(
        database,
        Registry(
            sites=[
                SiteEntry(
                    id="baker",
                    name="Baker",
                    timezone="Etc/GMT+12",
                    contract_current_a=100,
                    tariff_per_kwh=30,
                )
            ],
            controllers=[
                ControllerEntry(
                    id="bk-1", site="baker", outlets=[OutletEntry(number=1, outlet_id="BK-1")]
                )
            ],
        ),
    )
    client = add_client(database, "p", ["usage:read"])
    with psycopg.connect(database) as conn:
        for n, (charge, stopped) in enumerate(STOPS.items()):
            conn.execute(
                "INSERT INTO charges (charge_id, partner_charge_id, client_id, outlet_id,"
                " controller_id, outlet_no, request_sha256, state, start_generation, end_at,"
                " stopped_at, energy_wh, tariff_per_kwh, currency) VALUES (%s, %s, %s, 'BK-1',"
                " 'bk-1', 1, '\\x00', 'stopped', %s, %s, %s, 1000, 30, 'JPY')",
                (charge, charge, client.client_id, n, stopped, stopped),
            )

    async def month(first_day: dt.date) -> list[int]:
        async with await psycopg.AsyncConnection.connect(database) as conn:
            await conn.execute(f"SET TIME ZONE '{session_zone}'")
            return [
                r.charges for r in await repository.client_usage(conn, client.client_id, first_day)
            ]

    assert asyncio.run(month(dt.date(2026, 11, 1))) == [2]  # first-nov and late-nov
    assert asyncio.run(month(dt.date(2026, 12, 1))) == [1]  # early-dec

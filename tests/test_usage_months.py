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


#: Every month's usage, summed straight from the charges: what ``usage_monthly`` must hold.
_DIRECT = """
SELECT c.client_id, c.outlet_id,
       date_trunc('month', c.stopped_at AT TIME ZONE s.timezone)::date,
       count(*), sum(c.energy_kwh), sum(c.fee)
FROM charges c JOIN outlets o USING (outlet_id) JOIN controllers k
  ON k.controller_id = o.controller_id JOIN sites s ON s.site_id = k.site_id
WHERE c.state = 'stopped' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
"""
_KEPT = """
SELECT client_id, outlet_id, month, charges, energy_kwh, fee FROM usage_monthly
WHERE charges > 0 ORDER BY 1, 2, 3
"""


def test_the_months_kept_are_the_sums_of_the_charges_through_every_change(
    database: str,
) -> None:
    """``GET /v1/usage`` reads months kept as charges stop (``usage_monthly``); after
    charges start, stop, get their closing reading, have their stop corrected across a
    month boundary, and their site changes time zone, every month kept is still the sum
    of its charges' own records, to the cent."""
    sites = [
        SiteEntry(id=s, name=s, timezone=z, contract_current_a=100, tariff_per_kwh=t)
        for s, z, t in (("north", "Asia/Tokyo", 30), ("south", "Etc/GMT+12", 41))
    ]
    controllers = [
        ControllerEntry(
            id=f"{s.id}-1",
            site=s.id,
            outlets=[OutletEntry(number=n, outlet_id=f"{s.id.upper()}-{n}") for n in (1, 2)],
        )
        for s in sites
    ]
    import_registry(database, Registry(sites=sites, controllers=controllers))
    one, two = (add_client(database, p, ["usage:read"]).client_id for p in ("p1", "p2"))
    base = dt.datetime(2026, 10, 31, 14, 0, tzinfo=dt.UTC)
    with psycopg.connect(database, autocommit=True) as conn:

        def compare() -> None:
            assert conn.execute(_KEPT).fetchall() == conn.execute(_DIRECT).fetchall()

        for i in range(40):
            site = ("north", "south")[i % 2]
            conn.execute(
                "INSERT INTO charges (charge_id, partner_charge_id, client_id, outlet_id,"
                " controller_id, outlet_no, request_sha256, state, start_generation, end_at,"
                " energy_wh, tariff_per_kwh, currency) VALUES (%s, %s, %s, %s, %s, %s,"
                " '\\x00', 'drawing', %s, %s, %s, %s, 'JPY')",
                (
                    f"c{i}",
                    f"c{i}",
                    (one, two)[i % 3 == 0],
                    f"{site.upper()}-{1 + i % 2}",
                    f"{site}-1",
                    1 + i % 2,
                    i,
                    base,
                    1234.5 * i,
                    30 if site == "north" else 41,
                ),
            )
            compare()  # drawing: not counted yet
            # Stopped either side of midnight on 31 October (UTC), or failed.
            conn.execute(
                "UPDATE charges SET state = %s, stopped_at = %s WHERE charge_id = %s",
                (("stopped", "failed")[i % 5 == 4], base + dt.timedelta(hours=i - 20), f"c{i}"),
            )
        compare()
        conn.execute(  # the closing reading of a few
            "UPDATE charges SET energy_wh = energy_wh + 777.7 WHERE charge_id IN ('c2', 'c4')"
        )
        conn.execute(  # a stop corrected into the next month
            "UPDATE charges SET stopped_at = stopped_at + interval '40 days' WHERE charge_id = 'c6'"
        )
        conn.execute("DELETE FROM charges WHERE charge_id = 'c8'")
        compare()
        sites[0] = sites[0].model_copy(update={"timezone": "America/Los_Angeles"})
        import_registry(database, Registry(sites=sites, controllers=controllers))
        compare()
        assert conn.execute("SELECT count(*) FROM usage_monthly").fetchone() != (0,)

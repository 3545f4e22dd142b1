"""An installation upgraded to the places, history and tariffs schema (migration 0020)
keeps its charges billable and its outlets' availability announced from where they are."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psycopg
import pytest

from charging import availability_feed
from cloud_gateway.clients import add_client
from store import migrations
from tests.conftest import new_database
from tests.db import query

pytestmark = pytest.mark.database


@pytest.fixture
def before_0020(pg_url: str) -> Iterator[str]:
    """A database at migration 0019, as an installation of the previous version has it."""
    with new_database(pg_url) as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
                " name text NOT NULL, flavour text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            for m in migrations.load_migrations("plain"):
                if m.version >= 20:
                    break
                with conn.transaction():
                    conn.execute(m.sql.encode())
                    conn.execute(
                        "INSERT INTO schema_migrations VALUES (%s, %s, 'plain')",
                        (m.version, m.name),
                    )
        yield url


def test_upgrade_prices_old_charges_and_announces_the_next_change(before_0020: str) -> None:
    url = before_0020
    partner = add_client(url, "map", ["sites:read", "charges:write"], "https://maps.example/h")
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO sites (site_id, name, contract_current_a, tariff_per_kwh)"
            " VALUES ('hv', 'HV', 100, 31.5)"
        )
        conn.execute("INSERT INTO controllers (controller_id, site_id) VALUES ('hv-1', 'hv')")
        conn.execute(
            "INSERT INTO outlets (outlet_id, controller_id, outlet_no, rated_current_a,"
            " rise_threshold_a) VALUES ('HV-1', 'hv-1', 1, 16, 2), ('HV-2', 'hv-1', 2, 16, 2)"
        )
        conn.execute("INSERT INTO controller_status (controller_id, online) VALUES ('hv-1', true)")
        conn.execute(
            "INSERT INTO charges (charge_id, partner_charge_id, client_id, outlet_id,"
            " controller_id, outlet_no, request_sha256, state, start_generation, end_at,"
            " stopped_at, energy_wh) VALUES ('c1', 'wc-1', %s, 'HV-1', 'hv-1', 1, '\\x00',"
            " 'stopped', 1, now(), now(), 1234.5678)",
            (partner.client_id,),
        )

    assert migrations.upgrade(url)[0] == "0020_places_history_tariffs"  # and those after it

    ((tariff, currency, kwh, fee),) = query(
        url, "SELECT tariff_per_kwh, currency, energy_kwh, fee FROM charges"
    )
    assert (str(tariff), currency, str(kwh), str(fee)) == ("31.5000", "JPY", "1.235", "38.90")
    assert query(url, "SELECT outlet_id, status FROM outlet_availability ORDER BY 1") == [
        ("HV-1", "available"),
        ("HV-2", "available"),
    ]

    # A charge starts on HV-2: partners heard it was available, so they hear it is not.
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO charges (charge_id, partner_charge_id, client_id, outlet_id,"
            " controller_id, outlet_no, request_sha256, state, start_generation, end_at,"
            " tariff_per_kwh, currency) VALUES ('c2', 'wc-2', %s, 'HV-2', 'hv-1', 2, '\\x00',"
            " 'on', 2, now() + interval '1 hour', 31.5, 'JPY')",
            (partner.client_id,),
        )

    async def publish() -> int:
        async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
            return await availability_feed.publish(conn, min_gap_s=0)

    assert asyncio.run(publish()) == 1
    ((data,),) = query(
        url, "SELECT body->'data' FROM webhook_outbox WHERE kind = 'outlet.availability'"
    )
    assert (data["outlet_id"], data["available"], data["status"]) == ("HV-2", False, "charging")

"""Analytics over a fleet's history: the energy views and the docs' example queries.

A database (plain PostgreSQL, the flavour these machines run) is filled with the minutes
of ``--readings`` outlet readings (default 100,000,000; ``--quick`` 2,000,000), ending now:
sites of 5 controllers × 8 outlets (40 outlets, the car park of issue 19), as many
controllers as needed for 92 days of minutes each, each controller with its main meter
and one meter batch per minute. The minutes are written a day at a time through the same
tables ingest writes, so whatever ingest's writes maintain is maintained.

Then each query runs 5 times (after one unmeasured run) and the median and worst are
printed:

* one outlet's, and one site's, hourly, daily and monthly energy for the last full month
  (``energy_outlet_*`` and ``energy_site_*`` filtered by ``outlet_id`` / ``site_id`` and the
  period), target ≤ 50 ms each;
* every example query in docs/analytics.md, as written, target ≤ 1 s each.

The JSON records the database's size. There is no baseline to divide by: the figures are
absolute times of queries a user waits for.
"""

from __future__ import annotations

import re
import statistics
import sys
import time
from pathlib import Path

import psycopg

from bench.common import database, database_mb, emit, parser, workdir
from store.registry import import_registry
from store.registry_file import ControllerEntry, OutletEntry, Registry, SiteEntry

DAYS = 92
PER_SITE = 5
DOCS = Path(__file__).parent.parent / "docs" / "analytics.md"


def fleet(readings: int) -> Registry:
    controllers = max(PER_SITE, readings // (DAYS * 1440 * 8))
    sites = (controllers + PER_SITE - 1) // PER_SITE
    names = ["harbor-view"] + [f"site-{s:03d}" for s in range(1, sites)]
    return Registry(
        sites=[SiteEntry(id=n, name=n, contract_current_a=400, tariff_per_kwh=30) for n in names],
        controllers=[
            ControllerEntry(
                id=f"c{c:04d}",
                site=names[c // PER_SITE],
                has_main_meter=True,
                outlets=[OutletEntry(number=n, outlet_id=f"c{c:04d}-{n}") for n in range(1, 9)],
            )
            for c in range(sites * PER_SITE)
        ],
    )


def fill(url: str, registry: Registry, days: int) -> None:
    ids = [c.id for c in registry.controllers]
    with psycopg.connect(url, autocommit=True) as conn:
        start = time.perf_counter()
        for day in range(days, 0, -1):
            # Each outlet's meter grows 0-6 Wh a minute, varying over the day.
            conn.execute(
                "INSERT INTO outlet_readings"
                " SELECT c, n, m, 1000.0 * n + 3 * k + 180 * (1 - cos(k / 60.0)), 200 + n,"
                "  10 + 5 * sin(k / 60.0), true"
                " FROM unnest(%s::text[]) c, generate_series(1, 8) n,"
                "  generate_series(%s * 1440, %s * 1440 + 1439) k,"
                "  LATERAL (SELECT date_trunc('day', now()) - make_interval(days => %s)"
                "           + make_interval(mins => k) AS m) z",
                (ids, days - day, days - day, days),
            )
            conn.execute(
                "INSERT INTO main_meter_readings"
                " SELECT c, m, 1e6 + k * 20.0"
                " FROM unnest(%s::text[]) c, generate_series(%s * 1440, %s * 1440 + 1439) k,"
                "  LATERAL (SELECT date_trunc('day', now()) - make_interval(days => %s)"
                "           + make_interval(mins => k) AS m) z",
                (ids, days - day, days - day, days),
            )
            conn.execute(
                "INSERT INTO meter_batches (controller_id, seq, frames, first_minute, last_minute)"
                " SELECT c, k + 1, 1, m, m"
                " FROM unnest(%s::text[]) c, generate_series(%s * 1440, %s * 1440 + 1439) k,"
                "  LATERAL (SELECT date_trunc('day', now()) - make_interval(days => %s)"
                "           + make_interval(mins => k) AS m) z",
                (ids, days - day, days - day, days),
            )
            done = days - day + 1
            if done % 10 == 0 or done == days:
                print(
                    f"filled {done}/{days} days ({time.perf_counter() - start:.0f} s)",
                    file=sys.stderr,
                )
        conn.execute("VACUUM ANALYZE")


def timed(conn: psycopg.Connection, sql: str, params: tuple[object, ...] = ()) -> list[float]:
    conn.execute(sql, params).fetchall()  # unmeasured: plans and caches warm
    times = []
    for _ in range(5):
        start = time.perf_counter()
        conn.execute(sql, params).fetchall()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parser(__doc__)
    args.add_argument("--readings", type=int, default=100_000_000)
    opts = args.parse_args()
    readings = 2_000_000 if opts.quick else opts.readings
    registry = fleet(readings)
    # Up to DAYS days of minutes: a small fleet (--quick) gets fewer.
    days = min(DAYS, max(1, readings // (len(registry.controllers) * 8 * 1440)))
    with workdir() as tmp:
        url = database(tmp, [])
        import_registry(url, registry)
        fill(url, registry, days)
        size = database_mb(url)
        with psycopg.connect(url) as conn:
            stored = conn.execute("SELECT count(*) FROM outlet_readings").fetchone()
            month = conn.execute(
                "SELECT date_trunc('month', max(minute) AT TIME ZONE 'UTC')::date"
                " - interval '1 month' FROM outlet_readings"
            ).fetchone()
            assert stored is not None and month is not None
            first = month[0]
            period = (first, first)
            outlet, site = "c0000-1", "harbor-view"
            hour_range = (
                " AND hour >= (%s::date)::timestamp AT TIME ZONE 'UTC'"
                " AND hour < ((%s::date) + interval '1 month') AT TIME ZONE 'UTC'"
            )
            day_range = " AND day >= %s::date AND day < (%s::date + interval '1 month')"
            queries: dict[str, tuple[str, tuple[object, ...]]] = {
                "outlet_hourly": (
                    "SELECT hour, energy_wh FROM energy_outlet_hourly WHERE outlet_id = %s"
                    + hour_range,
                    (outlet, *period),
                ),
                "outlet_daily": (
                    "SELECT day, energy_wh FROM energy_outlet_daily WHERE outlet_id = %s"
                    + day_range,
                    (outlet, *period),
                ),
                "outlet_monthly": (
                    "SELECT month, energy_wh FROM energy_outlet_monthly WHERE outlet_id = %s"
                    " AND month = %s",
                    (outlet, first),
                ),
                "site_hourly": (
                    "SELECT hour, outlets_wh, main_meter_wh FROM energy_site_hourly"
                    " WHERE site_id = %s" + hour_range,
                    (site, *period),
                ),
                "site_daily": (
                    "SELECT day, outlets_wh FROM energy_site_daily WHERE site_id = %s" + day_range,
                    (site, *period),
                ),
                "site_monthly": (
                    "SELECT month, outlets_wh FROM energy_site_monthly WHERE site_id = %s"
                    " AND month = %s",
                    (site, first),
                ),
            }
            doc = DOCS.read_text()
            blocks = re.findall(r"```sql\n(.*?)```", doc, flags=re.S)
            examples = [s.strip() for b in blocks for s in b.split(";") if s.strip()]
            for n, example in enumerate(examples, 1):
                queries[f"docs_example_{n}"] = (example.replace("%", "%%"), ())
            results = {}
            for name, (sql, params) in queries.items():
                times = timed(conn, sql, params)
                results[name] = {
                    "median_ms": round(statistics.median(times) * 1000, 2),
                    "worst_ms": round(max(times) * 1000, 2),
                }
                print(
                    f"{name}: median {results[name]['median_ms']} ms,"
                    f" worst {results[name]['worst_ms']} ms",
                    file=sys.stderr,
                )
    emit(
        "analytics",
        {
            "readings": stored[0],
            "controllers": len(registry.controllers),
            "outlets_per_site": PER_SITE * 8,
            "days": days,
            "database_mb": size,
            "month": str(first),
            "queries": results,
        },
    )


if __name__ == "__main__":
    main()

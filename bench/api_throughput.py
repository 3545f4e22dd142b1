"""One API process under load: outlet status reads (token checked on every call), tokens,
and searches for places near a point.

The authorization server and the gateway run as in production (one uvicorn process each)
against a database holding a day of minute readings for every outlet, and 100,000 sites
(each with a controller and four outlets, a tenth of the controllers online) clustered
around ten cities as charging places are. The load comes from one client process that keeps
``--connections`` HTTP/1.1 connections busy with a minimal keep-alive client (a
general-purpose HTTP client would measure itself, not the server). Each phase runs for a
fixed time; every answer's status is checked.

The "near" phase asks ``GET /v1/sites?near=…`` (10 km, a page of 20 with their outlets)
around points drawn from the sites themselves, so most searches land in a city: once one
call at a time, for the latency a user waits (p50/p99), then on every connection, for
the rate; and the same searches with ``available=true`` one at a time.

The "history" phase gives the client 1,000,000 stopped charges over the last year (the
target's size; ``--quick``: 100,000) and times its history and usage screens one call at
a time (p50 and p99 of each, target p99 ≤ 10 ms): the first page of ``GET /v1/charges``,
a page from a cursor halfway down, one outlet's page, and ``GET /v1/usage`` for each month.

Targets: ≥ 1,000 status reads/s, ≥ 300 tokens/s, near searches p99 ≤ 20 ms.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import random
import statistics
import sys
import time

import psycopg
from authlib.integrations.httpx_client import OAuth2Client

from bench.common import database_mb, emit, parser, workdir
from bench.stack import Stack, partner_stack
from cloud_gateway import cursors

CONTROLLERS = [f"a{n:04d}" for n in range(4)]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--connections", type=int, default=16)
    args = p.parse_args()
    seconds = 3.0 if args.quick else 10.0
    with (
        workdir() as tmp,
        partner_stack(
            tmp,
            CONTROLLERS,
            scopes=["outlets:read", "sites:read", "charges:read", "usage:read"],
            edges=False,
        ) as stack,
    ):
        fill_readings(stack.db)
        points = fill_sites(stack.db, SITES)
        client = stack.client
        with OAuth2Client(
            client.client_id, client.client_secret, token_endpoint=stack.token_url
        ) as oauth:
            token = oauth.fetch_token(grant_type="client_credentials")["access_token"]
        outlets = [f"{c}-{n}" for c in CONTROLLERS for n in range(1, 9)]
        reads = [
            request(
                "GET", stack.api, f"/v1/outlets/{o}/status", {"authorization": f"Bearer {token}"}
            )
            for o in outlets
        ]
        basic = base64.b64encode(f"{client.client_id}:{client.client_secret}".encode()).decode()
        form = b"grant_type=client_credentials"
        tokens = [
            request(
                "POST",
                stack.token_url.rsplit("/oauth2", 1)[0],
                "/oauth2/token",
                {
                    "authorization": f"Basic {basic}",
                    "content-type": "application/x-www-form-urlencoded",
                },
                form,
            )
        ]
        auth = stack.token_url.rsplit("/oauth2", 1)[0]
        # Each phase after a second of the same load unmeasured: the servers' database
        # pools open their connections on demand, and the first second of a cold gateway
        # serves ~50 reads/s (measured), which is start-up, not the steady state.
        asyncio.run(load(stack.api, reads, 1.0, args.connections))
        status_rate = asyncio.run(load(stack.api, reads, seconds, args.connections))
        asyncio.run(load(auth, tokens, 1.0, args.connections))
        token_rate = asyncio.run(load(auth, tokens, seconds, args.connections))
        bearer = {"authorization": f"Bearer {token}"}
        near = [
            request("GET", stack.api, f"/v1/sites?near={lat:.5f},{lon:.5f}&radius_km=10", bearer)
            for lat, lon in points
        ]
        free = [
            request(
                "GET",
                stack.api,
                f"/v1/sites?near={lat:.5f},{lon:.5f}&radius_km=10&available=true",
                bearer,
            )
            for lat, lon in points
        ]
        asyncio.run(load(stack.api, near + free, 1.0, args.connections))
        waits = asyncio.run(latencies(stack.api, near, seconds))
        free_waits = asyncio.run(latencies(stack.api, free, seconds))
        near_rate = asyncio.run(load(stack.api, near, seconds, args.connections))
        sites_found = asyncio.run(mean_sites(stack.api, near[:200]))
        charges = CHARGES // 10 if args.quick else CHARGES
        history = history_calls(stack, bearer, charges)
        asyncio.run(load(stack.api, [c for calls in history.values() for c in calls], 1.0, 4))
        history_waits = {
            name: asyncio.run(latencies(stack.api, calls, seconds / 2))
            for name, calls in history.items()
        }
        size_mb = database_mb(stack.db)
    cuts = statistics.quantiles(waits, n=100)
    free_cuts = statistics.quantiles(free_waits, n=100)
    figures = {
        "seconds_per_phase": seconds,
        "connections": args.connections,
        "status_reads_per_s": round(status_rate),
        "tokens_per_s": round(token_rate),
        "sites": SITES,
        "near_sites_per_answer": round(sites_found, 1),
        "near_p50_ms": round(cuts[49] * 1000, 2),
        "near_p99_ms": round(cuts[98] * 1000, 2),
        "near_calls_timed": len(waits),
        "near_available_p50_ms": round(free_cuts[49] * 1000, 2),
        "near_available_p99_ms": round(free_cuts[98] * 1000, 2),
        "near_per_s": round(near_rate),
        "charges": charges,
        **{
            f"{name}_{p}_ms": round(statistics.quantiles(w, n=100)[k] * 1000, 2)
            for name, w in history_waits.items()
            for p, k in (("p50", 49), ("p99", 98))
        },
        "database_mb": size_mb,
    }
    print(
        f"status reads {figures['status_reads_per_s']}/s, tokens {figures['tokens_per_s']}/s,"
        f" near p50 {figures['near_p50_ms']} ms p99 {figures['near_p99_ms']} ms"
        f" ({figures['near_per_s']}/s), available only p99 {figures['near_available_p99_ms']} ms",
        file=sys.stderr,
    )
    emit("api_throughput", figures)


def fill_readings(db: str) -> None:
    """A day of minute readings per outlet, so every status read finds real rows."""
    with psycopg.connect(db) as conn:
        conn.execute(
            "INSERT INTO outlet_readings (controller_id, outlet_no, minute, energy_wh, voltage_v,"
            " current_a, breaker_on)"
            " SELECT c, n, date_trunc('minute', now()) - make_interval(mins => m),"
            "  10000 - m, 200, 0, false"
            " FROM unnest(%s::text[]) c, generate_series(1, 8) n, generate_series(0, 1439) m",
            (CONTROLLERS,),
        )


SITES = 100_000
#: (latitude, longitude, spread in degrees) of the cities the sites cluster around.
CITIES = [
    (35.68, 139.77, 0.25),  # Tokyo
    (34.69, 135.50, 0.2),  # Osaka
    (35.18, 136.91, 0.15),  # Nagoya
    (43.06, 141.35, 0.1),  # Sapporo
    (33.59, 130.40, 0.1),  # Fukuoka
    (34.39, 132.46, 0.08),  # Hiroshima
    (38.27, 140.87, 0.08),  # Sendai
    (35.01, 135.77, 0.08),  # Kyoto
    (34.69, 135.19, 0.08),  # Kobe
    (35.44, 139.64, 0.1),  # Yokohama
]


def fill_sites(db: str, count: int) -> list[tuple[float, float]]:
    """``count`` sites, each with a controller and four outlets, 70 % around the cities
    and the rest anywhere in the country; a tenth of the controllers online. Returns 500
    points to search around, drawn from the sites' own positions."""
    rng = random.Random(17)
    spots = []
    for _ in range(count):
        if rng.random() < 0.7:
            lat, lon, spread = rng.choice(CITIES)
            spots.append((rng.gauss(lat, spread), rng.gauss(lon, spread)))
        else:
            spots.append((rng.uniform(31, 45), rng.uniform(129, 146)))
    with psycopg.connect(db) as conn:
        with conn.cursor().copy(
            "COPY sites (site_id, name, contract_current_a, tariff_per_kwh, latitude, longitude,"
            " address) FROM STDIN"
        ) as copy:
            for i, (lat, lon) in enumerate(spots):
                copy.write_row((f"bs{i:06d}", f"Site {i}", 100, 30, lat, lon, f"{i} Main St"))
        conn.execute(
            "INSERT INTO controllers (controller_id, site_id)"
            " SELECT 'bc' || substr(site_id, 3), site_id FROM sites WHERE site_id LIKE 'bs%'"
        )
        conn.execute(
            "INSERT INTO outlets (outlet_id, controller_id, outlet_no, rated_current_a,"
            " rise_threshold_a) SELECT controller_id || '-' || n, controller_id, n, 16, 2"
            " FROM controllers, generate_series(1, 4) n WHERE controller_id LIKE 'bc%'"
        )
        conn.execute(
            "INSERT INTO controller_status (controller_id, online) SELECT controller_id, true"
            " FROM controllers WHERE controller_id LIKE 'bc%' AND random() < 0.1"
        )
        conn.execute("TRUNCATE availability_changes")  # the feed would announce them all
        conn.execute("ANALYZE")
    return rng.sample(spots, 500)


#: Stopped charges of the benchmark's client over the last year (``--quick``: a tenth).
CHARGES = 1_000_000


def history_calls(stack: Stack, bearer: dict[str, str], charges: int) -> dict[str, list[bytes]]:
    """``charges`` stopped charges of the benchmark's client over the last year; the calls
    its history and usage screens make: the first page, a page deep in the history
    (from a cursor), one outlet's page, and a month's usage."""
    with psycopg.connect(stack.db) as conn:
        # A year loaded at once: the months are counted once at the end, as the migration
        # that added them does, not charge by charge (one transaction rewriting the same
        # few month rows a million times is no workload of the system's).
        conn.execute("ALTER TABLE charges DISABLE TRIGGER charges_usage_insert")
        conn.execute(
            "INSERT INTO charges (charge_id, partner_charge_id, client_id, outlet_id,"
            " controller_id, outlet_no, request_sha256, state, start_generation, end_at,"
            " requested_at, started_at, stopped_at, stop_reason, energy_wh, tariff_per_kwh,"
            " currency)"
            " SELECT 'h' || i, 'wc-' || i, %s, c || '-' || (1 + i %% 8), c, 1 + i %% 8,"
            "  '\\x00', 'stopped', i, t, t, t, t + interval '1 hour', 'partner stopped',"
            "  5000 + i %% 7000, 30, 'JPY'"
            " FROM generate_series(1, %s) i,"
            "  LATERAL (SELECT (%s::text[])[1 + i %% %s] AS c,"
            "   now() - make_interval(secs => i * %s) AS t) x",
            (stack.client.client_id, charges, CONTROLLERS, len(CONTROLLERS), 31_536_000 / charges),
        )
        conn.execute("ALTER TABLE charges ENABLE TRIGGER charges_usage_insert")
        conn.execute("SELECT chargeline_usage_recount(ARRAY(SELECT outlet_id FROM outlets))")
        conn.execute("TRUNCATE availability_changes")
        conn.execute("ANALYZE charges")
        deep = conn.execute(
            "SELECT requested_at, partner_charge_id FROM charges WHERE client_id = %s"
            " ORDER BY requested_at DESC, partner_charge_id DESC OFFSET %s LIMIT 1",
            (stack.client.client_id, charges // 2),
        ).fetchone()
        months = [
            row[0]
            for row in conn.execute(
                "SELECT DISTINCT to_char(stopped_at, 'YYYY-MM') FROM charges ORDER BY 1"
            ).fetchall()
        ]
    assert deep is not None
    micros = (deep[0] - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)
    cursor = cursors.encode([micros, deep[1]])

    def get(path: str) -> bytes:
        return request("GET", stack.api, path, bearer)

    outlets = [f"{c}-{n}" for c in CONTROLLERS for n in range(1, 9)]
    return {
        "history_first_page": [get("/v1/charges")],
        "history_deep_page": [get(f"/v1/charges?cursor={cursor}")],
        "history_one_outlet": [get(f"/v1/charges?outlet_id={o}") for o in outlets],
        "usage_month": [get(f"/v1/usage?month={m}") for m in months],
    }


async def latencies(base: str, requests: list[bytes], seconds: float) -> list[float]:
    """One call at a time on one connection for ``seconds``: each call's time."""
    host, port = base.split("://", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    waits: list[float] = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        began = time.perf_counter()
        await _call(reader, writer, requests[i % len(requests)])
        waits.append(time.perf_counter() - began)
        i += 1
    writer.close()
    return waits


async def mean_sites(base: str, requests: list[bytes]) -> float:
    """How many sites a search answers with, on average."""
    host, port = base.split("://", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    counts = [(await _call(reader, writer, r)).count(b'"site_id"') for r in requests]
    writer.close()
    return statistics.mean(counts)


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, call: bytes) -> bytes:
    """Send one request; its body, once the answer is 200."""
    writer.write(call)
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"200":
        raise SystemExit(f"answered {head.decode(errors='replace')}")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return await reader.readexactly(length)


def request(method: str, base: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    host = base.split("://", 1)[1]
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def load(base: str, requests: list[bytes], seconds: float, connections: int) -> float:
    """Keep ``connections`` connections busy for ``seconds``; return answers per second."""
    host, port = base.split("://", 1)[1].split(":")
    deadline = time.monotonic() + seconds
    done = [0]

    async def worker(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        i = k
        while time.monotonic() < deadline:
            await _call(reader, writer, requests[i % len(requests)])
            i += 1
            done[0] += 1
        writer.close()

    start = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    return done[0] / (time.monotonic() - start)


if __name__ == "__main__":
    main()

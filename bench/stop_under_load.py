"""A partner's stop while ingest is saturated with an evening peak.

Everything runs as in production, on loopback (``bench.stack``: the amqtt broker,
PostgreSQL, ingest, the authorization server, the gateway and one simulated edge agent).
500 more controllers each have a charge drawing on all 8 outlets (4,000 open charges, as
at an evening peak), and a publisher in its own process sends their minute batches as
fast as the broker takes them, so every ingest write feeds thousands of open charges and
holds their row locks until it commits: the contention a stop meets at the worst time.

Meanwhile the partner starts a charge on the edge's outlets (unmeasured; the answer
comes when the breaker is ON) and stops it, one at a time: the figure is the stop's
answer time, from the POST to the 200 (the charge is ``stopping`` and the OFF command is
out). The same stops are timed with the fleet idle, in the same run, for comparison.
Target: p99 ≤ 50 ms under load.
"""

from __future__ import annotations

import subprocess
import sys
import time

from authlib.integrations.httpx_client import OAuth2Client

from bench.common import database_mb, emit, evening_peak, parser, rows, workdir
from bench.ingest_live import Workload, go, start_publisher
from bench.stack import Stack, ms, partner_stack
from kernel.settings import DEFAULT_ROOT
from kernel.stats import percentile

CID = "e0000"


def stops(stack: Stack, samples: int, tag: str, until: subprocess.Popen[str] | None) -> list[float]:
    """Answer times of ``samples`` stops (fewer if ``until`` ends first: the load is over)."""
    times: list[float] = []
    client = stack.client
    with OAuth2Client(
        client.client_id, client.client_secret, token_endpoint=stack.token_url
    ) as oauth:
        oauth.fetch_token(grant_type="client_credentials")
        for i in range(samples):
            if until is not None and until.poll() is not None:
                break
            charge = f"{tag}-{i}"
            started = oauth.post(
                f"{stack.api}/v1/charges",
                json={"outlet_id": f"{CID}-{i % 8 + 1}", "charge_id": charge},
            )
            if started.status_code != 201:
                raise SystemExit(f"start {charge} answered {started.status_code}: {started.text}")
            begin = time.perf_counter()
            stopped = oauth.post(f"{stack.api}/v1/charges/{charge}/stop")
            times.append(time.perf_counter() - begin)
            if stopped.status_code != 200:
                raise SystemExit(f"stop {charge} answered {stopped.status_code}: {stopped.text}")
    return times


def main() -> None:
    args = parser(__doc__).parse_args()
    samples = 60 if args.quick else 300
    load = Workload(controllers=500, messages=60 if args.quick else 240)
    fleet = load.controller_ids()
    with (
        workdir() as tmp,
        partner_stack(
            tmp, [CID, *fleet], scopes=["charges:write", "charges:read"], edges=[CID]
        ) as stack,
    ):
        evening_peak(stack.db, fleet, charging=True)
        idle = stops(stack, samples // 3, "idle", None)
        publisher = start_publisher(stack.mqtt_url, DEFAULT_ROOT, load)
        before = rows(stack.db)
        started = time.perf_counter()
        go(publisher)
        time.sleep(1.0)  # ingest is into the flood
        loaded = stops(stack, samples, "peak", publisher)
        seconds = time.perf_counter() - started
        stored = rows(stack.db) - before
        publisher.wait(600)
        size = database_mb(stack.db)
    if len(loaded) < samples // 2:
        raise SystemExit(f"the flood ended after {len(loaded)} stops; make it longer")
    figures = {
        "open_charges": len(fleet) * 8,
        "stops_timed": len(loaded),
        "stop_ms": {"p50": ms(percentile(loaded, 50)), "p99": ms(percentile(loaded, 99))},
        "stop_idle_ms": {"p50": ms(percentile(idle, 50)), "p99": ms(percentile(idle, 99))},
        "readings_stored_per_s_meanwhile": round(stored / seconds),
        "database_mb": size,
    }
    print(
        f"stop under load p50 {figures['stop_ms']['p50']} ms, p99 {figures['stop_ms']['p99']} ms"
        f" ({len(loaded)} stops, ingest storing {figures['readings_stored_per_s_meanwhile']:,}"
        f" readings/s); idle p99 {figures['stop_idle_ms']['p99']} ms",
        file=sys.stderr,
    )
    emit("stop_under_load", figures)


if __name__ == "__main__":
    main()

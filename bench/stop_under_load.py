"""A partner's stop while ingest writes an evening peak, on the very charges it feeds.

Everything runs as in production, on loopback (``bench.stack``: the amqtt broker,
PostgreSQL, ingest, the authorization server and the gateway). 500 controllers each have
a charge drawing on all 8 outlets (4,000 open charges, as at an evening peak), and a
publisher in its own process sends their minute batches at ``RATE`` messages a second
(20,000 readings/s: the peak's minutes compressed to one every 0.2 s, about what ingest
takes when each write holds one minute per outlet). Every ingest write then feeds about a
thousand of those charges and holds their row locks until it commits. The controllers' breakers are played by
``bench.acker``, which answers every desired state at once.

The partner stops those charges one at a time, spread over the controllers: the figure
is the stop's answer time, from the POST to the 200, which comes when the breaker's
answer is in (the charge ``stopped``) or after the gateway's wait for it. In the same run,
for comparison: the same stops with the fleet idle, and a read of each stopped charge
(a call that takes no lock: what the load costs any call on this machine). Target: stop
p99 ≤ 50 ms under load.

Both brokers, in the same run. The fleet's 2,500 batches a second are what 150,000
controllers send at their real rate of one a minute (the benchmark compresses 500
controllers' minutes), and at that scale the design runs Mosquitto (DESIGN.md, "Scale";
the embedded amqtt broker serves a few hundred controllers): the target is Mosquitto's
figure. amqtt's is printed beside it; there the load asks the broker for about as many
QoS 1 messages a second as it can carry (``bench.broker``), and the time a command waits
in its event loop is the stop's tail (docs/benchmarks.md).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

from authlib.integrations.httpx_client import OAuth2Client

from bench.common import database_mb, emit, evening_peak, parser, rows, workdir
from bench.ingest_live import Workload, go, start_publisher
from bench.stack import Stack, ms, partner_stack
from kernel.settings import DEFAULT_ROOT
from kernel.stats import percentile

#: Messages per second from the fleet (8 readings each).
RATE = 2_500


def stops(
    stack: Stack, charges: Iterator[str], samples: int, until: subprocess.Popen[str] | None
) -> tuple[list[float], list[float], int]:
    """Answer times of ``samples`` stops (fewer if ``until`` ends first: the load is
    over), of a read of each stopped charge, and how many stops were answered ``stopped``
    (the breaker's answer came within the gateway's wait)."""
    times: list[float] = []
    reads: list[float] = []
    answered = 0
    client = stack.client
    with OAuth2Client(
        client.client_id, client.client_secret, token_endpoint=stack.token_url
    ) as oauth:
        oauth.fetch_token(grant_type="client_credentials")
        for _ in range(samples):
            if until is not None and until.poll() is not None:
                break
            charge = next(charges)
            begin = time.perf_counter()
            stopped = oauth.post(f"{stack.api}/v1/charges/{charge}/stop")
            times.append(time.perf_counter() - begin)
            if stopped.status_code != 200:
                raise SystemExit(f"stop {charge} answered {stopped.status_code}: {stopped.text}")
            answered += stopped.json()["state"] == "stopped"
            begin = time.perf_counter()
            oauth.get(f"{stack.api}/v1/charges/{charge}")
            reads.append(time.perf_counter() - begin)
    return times, reads, answered


def measure(broker: str, quick: bool) -> dict[str, object]:
    """One broker's figures: stops idle, then stops and reads under the peak."""
    samples = 60 if quick else 300
    # Enough batches for the stops to be timed (a few dozen a second) within the flood.
    load = Workload(controllers=500, messages=60 if quick else 240)
    fleet = load.controller_ids()
    charges = (f"peak-{fleet[k % len(fleet)]}-{1 + k // len(fleet)}" for k in range(8 * 500))
    with (
        workdir() as tmp,
        partner_stack(
            tmp,
            fleet,
            scopes=["charges:write", "charges:read"],
            edges=False,
            broker=broker,
        ) as stack,
    ):
        evening_peak(stack.db, fleet, charging=True, client_id=stack.client.client_id)
        acker = subprocess.Popen(
            [sys.executable, "-m", "bench.acker", stack.mqtt_url, DEFAULT_ROOT],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert acker.stdout is not None and acker.stdout.readline().strip() == "ready"
            idle, idle_reads, _ = stops(stack, charges, samples // 3, None)
            publisher = start_publisher(stack.mqtt_url, DEFAULT_ROOT, load, rate=RATE)
            before = rows(stack.db)
            started = time.perf_counter()
            go(publisher)
            time.sleep(1.0)  # ingest is into the peak
            loaded, reads, answered = stops(stack, charges, samples, publisher)
            seconds = time.perf_counter() - started
            stored = rows(stack.db) - before
            publisher.wait(600)
            size = database_mb(stack.db)
        finally:
            acker.terminate()
            acker.wait(10)
    if len(loaded) < samples // 2:
        raise SystemExit(f"the load ended after {len(loaded)} stops; make it longer")
    figures: dict[str, object] = {
        "stops_timed": len(loaded),
        "stops_answered_stopped": answered,
        "stop_ms": {"p50": ms(percentile(loaded, 50)), "p99": ms(percentile(loaded, 99))},
        "stop_idle_ms": {"p50": ms(percentile(idle, 50)), "p99": ms(percentile(idle, 99))},
        "read_ms": {"p50": ms(percentile(reads, 50)), "p99": ms(percentile(reads, 99))},
        "read_idle_ms": {
            "p50": ms(percentile(idle_reads, 50)),
            "p99": ms(percentile(idle_reads, 99)),
        },
        "readings_stored_per_s_meanwhile": round(stored / seconds),
        "database_mb": size,
    }
    print(
        f"{broker}: stop under load p50 {ms(percentile(loaded, 50))} ms,"
        f" p99 {ms(percentile(loaded, 99))} ms ({len(loaded)} stops, {answered} answered"
        f" stopped; ingest storing {figures['readings_stored_per_s_meanwhile']:,} readings/s);"
        f" idle p99 {ms(percentile(idle, 99))} ms; a read under load p99"
        f" {ms(percentile(reads, 99))} ms",
        file=sys.stderr,
    )
    return figures


def main() -> None:
    args = parser(__doc__).parse_args()
    brokers = {broker: measure(broker, args.quick) for broker in ("mosquitto", "amqtt")}
    target = brokers["mosquitto"]["stop_ms"]
    assert isinstance(target, dict)
    print(
        f"target (Mosquitto, the broker at this scale): stop p99 {target['p99']} ms"
        f" ({'met' if target['p99'] <= 50 else 'not met'}: ≤ 50 ms)",
        file=sys.stderr,
    )
    emit(
        "stop_under_load",
        {
            "open_charges": 8 * 500,
            "fleet_messages_per_s": RATE,
            "stop_p99_ms": target["p99"],
            "brokers": brokers,
        },
    )


if __name__ == "__main__":
    main()

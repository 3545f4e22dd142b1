"""A current step at a simulated outlet → the partner receives ``charge.current_rise``.

The whole stack runs as in production, on loopback and in real time (one sample per
second at the edge, as in the field): broker, PostgreSQL, ingest, the authorization
server, the gateway and simulated edge agents with a car on every outlet, plus the
partner's webhook receiver. The partner starts a charge; the breaker closes, the car
draws 16 A from the next sample on, the edge reports the crossing at once, ingest turns
it into the webhook. The clock runs from the start request (before the step, so the
figure is an upper bound) to the webhook's arrival. Starts are spread over the sampling
second so the step meets every phase of the edge's sampling. Target: p99 ≤ 2 s.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import time

import httpx2
from authlib.integrations.httpx_client import OAuth2Client

from bench.common import database_mb, emit, parser, workdir
from bench.stack import Stack, ms, partner_stack
from kernel.stats import percentile
from tests.receiver import Receiver


def main() -> None:
    args = parser(__doc__).parse_args()
    controllers = [f"r{n:04d}" for n in range(1 if args.quick else 4)]
    rounds = 1 if args.quick else 2
    receiver = Receiver()
    receiver.start()
    try:
        with (
            workdir() as tmp,
            partner_stack(
                tmp,
                controllers,
                scopes=["charges:write", "charges:read"],
                webhook_url=receiver.url,
                edge_env={
                    "CHARGELINE_SAMPLE_INTERVAL_S": "1",
                    "CHARGELINE_SIM_CARS": ",".join(f"{n}:50000:16" for n in range(1, 9)),
                },
            ) as stack,
        ):
            latencies = measure(stack, receiver, controllers, rounds)
            size = database_mb(stack.db)
    finally:
        receiver.stop()
    figures = {
        "samples": len(latencies),
        "rise_webhook_ms": {
            "p50": ms(percentile(latencies, 50)),
            "p99": ms(percentile(latencies, 99)),
            "max": ms(max(latencies)),
            "mean": ms(statistics.fmean(latencies)),
        },
        "edge_sample_interval_s": 1,
        "database_mb": size,
    }
    print(
        f"current step → current-rise webhook: p50 {figures['rise_webhook_ms']['p50']} ms,"
        f" p99 {figures['rise_webhook_ms']['p99']} ms over {len(latencies)} charges",
        file=sys.stderr,
    )
    emit("current_rise", figures)


def measure(stack: Stack, receiver: Receiver, controllers: list[str], rounds: int) -> list[float]:
    client = stack.client
    latencies: list[float] = []
    rng = random.Random(7)
    with OAuth2Client(
        client.client_id, client.client_secret, token_endpoint=stack.token_url
    ) as oauth:
        oauth.fetch_token(grant_type="client_credentials")
        for r in range(rounds):
            started: dict[str, float] = {}
            for cid in controllers:
                for n in range(1, 9):
                    time.sleep(rng.uniform(0.1, 0.4))  # spread over the sampling phase
                    charge_id = f"rise-{r}-{cid}-{n}"
                    started[charge_id] = time.monotonic()
                    answer: httpx2.Response = oauth.post(
                        f"{stack.api}/v1/charges",
                        json={"outlet_id": f"{cid}-{n}", "charge_id": charge_id},
                    )
                    if answer.status_code not in (201, 202):
                        raise SystemExit(f"start answered {answer.status_code}: {answer.text}")
            arrived = wait_for_rises(receiver, set(started), timeout=30)
            latencies += [arrived[c] - started[c] for c in started]
            print(f"round {r + 1}/{rounds}: {len(started)} rises", file=sys.stderr)
            for charge_id in started:
                oauth.post(f"{stack.api}/v1/charges/{charge_id}/stop")
            if r + 1 < rounds:
                wait_until_stopped(oauth, stack.api, list(started))
    return latencies


def wait_for_rises(receiver: Receiver, charges: set[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        arrived = {}
        for (_, body), at in zip(receiver.accepted, receiver.arrived, strict=True):
            event = json.loads(body)
            charge_id = event["data"].get("charge_id")
            if event["type"] == "charge.current_rise" and charge_id in charges:
                arrived.setdefault(charge_id, at)
        if len(arrived) == len(charges):
            return arrived
        time.sleep(0.05)
    missing = sorted(charges - set(arrived))
    raise SystemExit(f"no current-rise webhook within {timeout:.0f} s for {missing}")


def wait_until_stopped(oauth: OAuth2Client, api: str, charges: list[str]) -> None:
    """An outlet takes a new charge once the last one is stopped (after its next minute)."""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        states = {oauth.get(f"{api}/v1/charges/{c}").json()["state"] for c in charges}
        if states <= {"stopped", "failed"}:
            return
        time.sleep(1)
    raise SystemExit("charges did not stop within 150 s")


if __name__ == "__main__":
    main()

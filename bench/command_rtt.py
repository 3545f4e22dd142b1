"""Charge start through the API to the breaker's acknowledgement and the HTTP answer.

Everything runs as in production, on loopback: the embedded amqtt broker, PostgreSQL,
ingest, the authorization server, the gateway (uvicorn) and one simulated edge agent. The
partner posts a start (with a token from the authorization server) and the clock stops
when the answer arrives with the breaker ON; a stop follows, unmeasured, to free the
outlet. In the same run a raw MQTT QoS 1 round trip (publish → broker → subscriber) is
measured for comparison. Targets: API start p50 ≤ 10 ms, p99 ≤ 30 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import httpx2
from authlib.integrations.httpx_client import OAuth2Client

from bench.common import emit, parser, workdir
from bench.stack import Stack, ms, partner_stack
from kernel import mqtt
from kernel.settings import MqttUrl
from kernel.stats import percentile

CID = "b0000"


async def mqtt_rtt(url: str, samples: int) -> list[float]:
    """Publish QoS 1 and wait for the same message to come back through the broker."""
    times: list[float] = []
    async with mqtt.client(MqttUrl(url), identifier="bench-rtt") as client:
        await client.subscribe("bench/rtt", qos=1)
        messages = aiter(client.messages)
        for i in range(samples):
            start = time.perf_counter()
            await client.publish("bench/rtt", str(i).encode(), qos=1)
            await anext(messages)
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parser(__doc__).parse_args()
    samples = 50 if args.quick else 300
    with (
        workdir() as tmp,
        partner_stack(tmp, [CID], scopes=["charges:write", "charges:read"]) as stack,
    ):
        raw = asyncio.run(mqtt_rtt(stack.mqtt_url, samples))
        api, reads = api_starts(stack, samples)
    figures = {
        "samples": samples,
        "api_start_ms": {"p50": ms(percentile(api, 50)), "p99": ms(percentile(api, 99))},
        "mqtt_qos1_rtt_ms": {"p50": ms(percentile(raw, 50)), "p99": ms(percentile(raw, 99))},
        "api_read_ms": {"p50": ms(percentile(reads, 50)), "p99": ms(percentile(reads, 99))},
        "ratio_p50": round(statistics.median(api) / statistics.median(raw), 2),
    }
    print(
        f"API start p50 {figures['api_start_ms']['p50']} ms, p99 {figures['api_start_ms']['p99']}"
        f" ms; raw MQTT QoS 1 p50 {figures['mqtt_qos1_rtt_ms']['p50']} ms,"
        f" p99 {figures['mqtt_qos1_rtt_ms']['p99']} ms",
        file=sys.stderr,
    )
    emit("command_rtt", figures)


def api_starts(stack: Stack, samples: int) -> tuple[list[float], list[float]]:
    """Times of ``samples`` starts, and of a plain authenticated read of each charge."""
    times: list[float] = []
    reads: list[float] = []
    client = stack.client
    with OAuth2Client(
        client.client_id, client.client_secret, token_endpoint=stack.token_url
    ) as oauth:
        oauth.fetch_token(grant_type="client_credentials")
        api = stack.api
        for i in range(samples + 5):
            outlet = f"{CID}-{i % 8 + 1}"
            start = time.perf_counter()
            response: httpx2.Response = oauth.post(
                f"{api}/v1/charges", json={"outlet_id": outlet, "charge_id": f"bench-{i}"}
            )
            elapsed = time.perf_counter() - start
            if response.status_code != 201 or response.json()["state"] != "on":
                raise SystemExit(f"start {i} answered {response.status_code}: {response.text}")
            if i >= 5:  # the first few warm connections and caches up
                times.append(elapsed)
            start = time.perf_counter()
            oauth.get(f"{api}/v1/charges/bench-{i}")
            reads.append(time.perf_counter() - start)
            stop = oauth.post(f"{api}/v1/charges/bench-{i}/stop")
            if stop.status_code != 200:
                raise SystemExit(f"stop {i} answered {stop.status_code}: {stop.text}")
    return times, reads


if __name__ == "__main__":
    main()

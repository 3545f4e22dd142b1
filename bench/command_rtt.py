"""Charge start through the API to the breaker's acknowledgement and the HTTP answer.

Everything runs as in production, on loopback: the embedded amqtt broker, PostgreSQL,
ingest, the authorization server, the gateway (uvicorn) and one simulated edge agent. The
partner posts a start (with a token from the authorization server) and the clock stops
when the answer arrives with the breaker ON; a stop follows, unmeasured, to free the
outlet. Targets: API start p50 ≤ 10 ms, p99 ≤ 30 ms.

Baselines, in the same run and through the same broker:

* ``mqtt_echo_ms``: what a command's trip costs with nothing else to do: a retained QoS 1
  desired state published with the gateway's MQTT client, to a separate process that
  answers each with a ``CommandAck`` at once (``bench.acker``, on a topic root of its
  own), until the ack is back. Four broker crossings and two processes, like a start's
  desired state to the edge and its ack back; ``ratio_p50`` is the start ÷ this.
* ``mqtt_qos1_rtt_ms``: one client publishing to itself (two crossings), for comparison
  with the figures before the echo existed.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import cast

import httpx2
from authlib.integrations.httpx_client import OAuth2Client

from bench.common import database_mb, emit, parser, workdir
from bench.stack import Stack, ms, partner_stack
from kernel import mqtt
from kernel.settings import MqttUrl
from kernel.stats import percentile
from schemas.codec import decode, encode
from schemas.messages import CommandAck, DesiredState
from schemas.topics import Topics

CID = "b0000"


#: The echo's own topic root: nothing of the stack's (ingest, the gateway) sees its traffic.
ECHO_ROOT = "bench-echo"


@contextmanager
def echoer(url: str) -> Iterator[None]:
    """``bench.acker`` on the echo's root: answers each desired state with its ack."""
    acker = subprocess.Popen(
        [sys.executable, "-m", "bench.acker", url, ECHO_ROOT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert acker.stdout is not None and acker.stdout.readline().strip() == "ready"
        yield
    finally:
        acker.terminate()
        acker.wait(10)


async def mqtt_echo(url: str, samples: int) -> list[float]:
    """Desired state out to the ``echoer`` and its ack back, one at a time."""
    topics = Topics(ECHO_ROOT)
    times: list[float] = []
    async with mqtt.client(MqttUrl(url), identifier="bench-echo") as client:
        await client.subscribe(topics.ack("echo"), qos=1)
        answers = aiter(client.messages)
        for i in range(samples + 5):
            want = DesiredState("echo", 1 + i % 8, i % 2 == 0, i + 1, None, None, time.time())
            start = time.perf_counter()
            await client.publish(
                topics.desired("echo", want.outlet), encode(want), qos=1, retain=True
            )
            while True:
                ack = decode(CommandAck, bytes(cast(bytes, (await anext(answers)).payload)))
                if ack.generation == want.generation:
                    break
            if i >= 5:  # the first few warm the path up, as for the starts
                times.append(time.perf_counter() - start)
    return times


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
        with echoer(stack.mqtt_url):
            echo = asyncio.run(mqtt_echo(stack.mqtt_url, samples))
        api, reads = api_starts(stack, samples)
        size = database_mb(stack.db)
    figures = {
        "samples": samples,
        "api_start_ms": {"p50": ms(percentile(api, 50)), "p99": ms(percentile(api, 99))},
        "mqtt_echo_ms": {"p50": ms(percentile(echo, 50)), "p99": ms(percentile(echo, 99))},
        "mqtt_qos1_rtt_ms": {"p50": ms(percentile(raw, 50)), "p99": ms(percentile(raw, 99))},
        "api_read_ms": {"p50": ms(percentile(reads, 50)), "p99": ms(percentile(reads, 99))},
        "ratio_p50": round(statistics.median(api) / statistics.median(echo), 2),
        "database_mb": size,
    }
    print(
        f"API start p50 {figures['api_start_ms']['p50']} ms, p99 {figures['api_start_ms']['p99']}"
        f" ms; desired state out and ack back (MQTT echo) p50 {figures['mqtt_echo_ms']['p50']}"
        f" ms, p99 {figures['mqtt_echo_ms']['p99']} ms (start ÷ echo at p50:"
        f" {figures['ratio_p50']}); one-hop QoS 1 p50 {figures['mqtt_qos1_rtt_ms']['p50']} ms",
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

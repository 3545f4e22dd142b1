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
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import psycopg
from authlib.integrations.httpx_client import OAuth2Client

from bench.common import amqtt_broker, database, emit, parser, workdir
from chargeline import mqtt
from chargeline.settings import MqttUrl
from cloud_gateway.clients import add_client
from tests.helpers import free_port, wait_port

CID = "b0000"


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@contextmanager
def service(args: list[str], env: dict[str, str]) -> Iterator[None]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "chargeline", *args],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(15)


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
    with workdir() as tmp, amqtt_broker(tmp) as url:
        db = database(Path(tmp), [CID])
        client = add_client(db, "bench", ["charges:write", "charges:read"])
        auth_port, api_port = free_port(), free_port()
        env = {
            "CHARGELINE_DATABASE_URL": db,
            "CHARGELINE_MQTT_URL": url,
            "CHARGELINE_DATA_DIR": str(tmp / "data"),
            "CHARGELINE_LOG_LEVEL": "WARNING",
            "CHARGELINE_ISSUER": f"http://127.0.0.1:{auth_port}",
            "CHARGELINE_AUTH_BIND": f"127.0.0.1:{auth_port}",
            "CHARGELINE_API_BIND": f"127.0.0.1:{api_port}",
            "CHARGELINE_API_RATE_PER_S": "10000",
            "CHARGELINE_API_BURST": "10000",
        }
        edge_args = ["edge", "--controller-id", CID]
        with (
            service(["ingest"], env),
            service(["auth"], env),
            service(["gateway"], env),
            service(edge_args, {**env, "CHARGELINE_SIM_AUTOPLAY": "false"}),
        ):
            wait_port(auth_port)
            wait_port(api_port)
            wait_online(db)
            raw = asyncio.run(mqtt_rtt(url, samples))
            api = api_starts(
                f"http://127.0.0.1:{api_port}",
                f"http://127.0.0.1:{auth_port}/oauth2/token",
                client.client_id,
                client.client_secret,
                samples,
            )
    figures = {
        "samples": samples,
        "api_start_ms": {"p50": ms(percentile(api, 50)), "p99": ms(percentile(api, 99))},
        "mqtt_qos1_rtt_ms": {"p50": ms(percentile(raw, 50)), "p99": ms(percentile(raw, 99))},
        "ratio_p50": round(statistics.median(api) / statistics.median(raw), 2),
    }
    print(
        f"API start p50 {figures['api_start_ms']['p50']} ms, p99 {figures['api_start_ms']['p99']}"
        f" ms; raw MQTT QoS 1 p50 {figures['mqtt_qos1_rtt_ms']['p50']} ms,"
        f" p99 {figures['mqtt_qos1_rtt_ms']['p99']} ms",
        file=sys.stderr,
    )
    emit("command_rtt", figures)


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def wait_online(db: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with psycopg.connect(db) as conn:
            row = conn.execute(
                "SELECT online FROM controller_status WHERE controller_id = %s", (CID,)
            ).fetchone()
        if row and row[0]:
            return
        time.sleep(0.2)
    raise SystemExit("the edge agent never came online")


def api_starts(api: str, token_url: str, client_id: str, secret: str, samples: int) -> list[float]:
    times: list[float] = []
    with OAuth2Client(client_id, secret, token_endpoint=token_url) as oauth:
        oauth.fetch_token(grant_type="client_credentials")
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
            stop = oauth.post(f"{api}/v1/charges/bench-{i}/stop")
            if stop.status_code != 200:
                raise SystemExit(f"stop {i} answered {stop.status_code}: {stop.text}")
    return times


if __name__ == "__main__":
    main()

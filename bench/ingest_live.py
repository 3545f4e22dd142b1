"""Live ingest: one ingest process, one-minute batches of 8 readings from many controllers, QoS 1.

For each broker (Mosquitto, then the embedded amqtt), in the same run:

* ``bare_subscriber_readings_per_s``: an aiomqtt subscriber that only receives the messages;
* ``readings_per_s``: the ingest worker receiving, validating, committing and acknowledging;
* ``ratio``: ingest ÷ bare. The target is ≥ 0.8, and ≥ 40,000 readings/s through Mosquitto.

The full run repeats bare and ingest three times, interleaved, and reports the medians
(each round's figures are in the JSON too): single rounds on this shared 2-core machine
vary by ±20 %.

Rates run from the publisher's first message to the last reading received (bare) or
committed (ingest). The publisher is a separate process (bench/publisher.py).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

from bench.common import amqtt_broker, database, emit, mosquitto_broker, parser, rows, workdir
from chargeline import mqtt
from chargeline.settings import IngestSettings, MqttUrl
from ingest.worker import Ingest

CONTROLLERS = 500


def start_publisher(url: str, root: str, messages: int, frames: int = 1) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.publisher",
            url,
            root,
            str(CONTROLLERS),
            str(messages),
            str(frames),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def go(proc: subprocess.Popen[str]) -> float:
    assert proc.stdin is not None
    start = time.perf_counter()
    proc.stdin.write("go\n")
    proc.stdin.flush()
    return start


async def bare(url: str, root: str, messages: int) -> float:
    total = CONTROLLERS * messages
    async with mqtt.client(
        MqttUrl(url), identifier="bench-bare", max_inflight_messages=1000
    ) as client:
        await client.subscribe(f"{root}/ctl/+/meter", qos=1)
        publisher = start_publisher(url, root, messages)
        start = go(publisher)
        received = 0
        async for _ in client.messages:
            received += 1
            if received == total:
                break
        elapsed = time.perf_counter() - start
    publisher.wait(60)
    return total * 8 / elapsed


async def ingest(url: str, root: str, messages: int, db: str, frames: int = 1) -> float:
    """Readings/s from the publisher's first message until ingest has committed them all."""
    total_rows = CONTROLLERS * messages * frames * 8
    settings = IngestSettings(mqtt_url=url, topic_root=root, database_url=db, log_level="WARNING")
    async with Ingest(settings, database_url=db) as worker:
        task = asyncio.create_task(worker.run())
        await worker.ready.wait()
        publisher = start_publisher(url, root, messages, frames)
        start = go(publisher)
        while worker.counters.readings < total_rows:  # noqa: ASYNC110 - polls a counter the worker updates
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        task.cancel()
    publisher.wait(60)
    assert rows(db) == total_rows, "not every reading was stored"
    return total_rows / elapsed


def main() -> None:
    args = parser(__doc__).parse_args()
    messages = 4 if args.quick else 16  # per controller: 2,000 or 8,000 messages
    rounds = 1 if args.quick else 3
    figures: dict[str, object] = {
        "controllers": CONTROLLERS,
        "messages": CONTROLLERS * messages,
        "readings_per_message": 8,
        "rounds": rounds,
    }
    controllers = [f"b{c:04d}" for c in range(CONTROLLERS)]
    with workdir() as tmp:
        for name, broker in (("mosquitto", mosquitto_broker), ("amqtt", amqtt_broker)):
            bare_rates: list[float] = []
            ingest_rates: list[float] = []
            with broker(tmp) as url:
                for r in range(rounds):  # interleaved, so both see the same machine load
                    db = database(Path(tmp), controllers)
                    bare_rates.append(asyncio.run(bare(url, f"{name}/bare{r}", messages)))
                    ingest_rates.append(asyncio.run(ingest(url, f"{name}/ingest{r}", messages, db)))
                    print(
                        f"{name} round {r + 1}/{rounds}: ingest {ingest_rates[-1]:,.0f} readings/s,"
                        f" bare subscriber {bare_rates[-1]:,.0f}",
                        file=sys.stderr,
                    )
            ingest_rate, bare_rate = median(ingest_rates), median(bare_rates)
            figures[name] = {
                "readings_per_s": round(ingest_rate),
                "bare_subscriber_readings_per_s": round(bare_rate),
                "ratio": round(ingest_rate / bare_rate, 3),
                "rounds_readings_per_s": [round(x) for x in ingest_rates],
                "rounds_bare_readings_per_s": [round(x) for x in bare_rates],
            }
            print(
                f"{name}: ingest {ingest_rate:,.0f} readings/s, bare subscriber {bare_rate:,.0f} "
                f"(ratio {ingest_rate / bare_rate:.2f}; medians of {rounds})",
                file=sys.stderr,
            )
    emit("ingest_live", figures)


if __name__ == "__main__":
    main()

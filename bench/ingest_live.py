"""Live ingest: one ingest process, one-minute batches of 8 readings from many controllers, QoS 1.

For each broker (Mosquitto, then the embedded amqtt), in the same run:

* ``bare_subscriber_readings_per_s``: an aiomqtt subscriber with ingest's subscriptions that
  only receives the messages;
* ``readings_per_s``: the ingest worker receiving, validating, committing and acknowledging;
* ``ratio``: ingest ÷ bare. The target is ≥ 0.8, and ≥ 40,000 readings/s through Mosquitto.

The full run repeats bare and ingest three times, interleaved, and reports the medians
(each round's figures are in the JSON too): single rounds on this shared 2-core machine
vary by ±20 %. ``acks_per_message`` shows how many ``meter/ack`` messages ingest sent per
batch: here each controller sends 16 batches within seconds, so acks merge (as they do
when edges catch up after an outage). ``--steady`` sends one batch from each of 8,000
controllers instead, as in steady operation, where every batch costs its own ack.

Rates run from the publisher's first message to the last reading received (bare) or
committed (ingest). The publisher is a separate process (bench/publisher.py).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from bench.common import amqtt_broker, database, emit, mosquitto_broker, parser, rows, workdir
from ingest.settings import IngestSettings
from ingest.worker import SUBSCRIBED, Ingest
from kernel import mqtt
from kernel.settings import MqttUrl
from schemas.topics import Topics

CONTROLLERS = 500


@dataclass(frozen=True)
class Workload:
    """``controllers`` each publish ``messages`` batches of ``frames`` minutes of 8 outlets."""

    controllers: int
    messages: int
    frames: int = 1

    @property
    def total_messages(self) -> int:
        return self.controllers * self.messages

    @property
    def readings(self) -> int:
        return self.total_messages * self.frames * 8

    def controller_ids(self) -> list[str]:
        return [f"b{c:04d}" for c in range(self.controllers)]


def start_publisher(url: str, root: str, load: Workload) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.publisher",
            url,
            root,
            str(load.controllers),
            str(load.messages),
            str(load.frames),
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


async def bare(url: str, root: str, load: Workload) -> float:
    async with mqtt.client(
        MqttUrl(url), identifier="bench-bare", max_inflight_messages=1000
    ) as client:
        # The same subscriptions as ingest: amqtt matches every message against every filter.
        topics = Topics(root)
        for kind in SUBSCRIBED:
            await client.subscribe(topics.all_controllers(kind), qos=1)
        publisher = start_publisher(url, root, load)
        start = go(publisher)
        received = 0
        async for _ in client.messages:
            received += 1
            if received == load.total_messages:
                break
        elapsed = time.perf_counter() - start
    publisher.wait(60)
    return load.readings / elapsed


@dataclass
class IngestRun:
    readings_per_s: float
    acks_per_message: float


async def ingest(url: str, root: str, load: Workload, db: str) -> IngestRun:
    """Readings/s from the publisher's first message until ingest has committed them all."""
    settings = IngestSettings(mqtt_url=url, topic_root=root, database_url=db, log_level="WARNING")
    async with Ingest(settings, database_url=db) as worker:
        task = asyncio.create_task(worker.run())
        await worker.ready.wait()
        publisher = start_publisher(url, root, load)
        start = go(publisher)
        while worker.counters.readings < load.readings:  # noqa: ASYNC110 - polls a counter the worker updates
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        await asyncio.sleep(settings.ack_max_delay_s + 0.5)  # let the last acks go out
        acks = worker.counters.acks
        task.cancel()
    publisher.wait(60)
    assert rows(db) == load.readings, "not every reading was stored"
    return IngestRun(load.readings / elapsed, acks / load.total_messages)


def main() -> None:
    args = parser(__doc__)
    args.add_argument(
        "--steady",
        action="store_true",
        help="one batch from each of 8,000 controllers (steady operation: no acks to merge)",
    )
    opts = args.parse_args()
    if opts.steady:
        load = Workload(controllers=8000, messages=1)
    else:
        load = Workload(controllers=CONTROLLERS, messages=4 if opts.quick else 16)
    rounds = 1 if opts.quick else 3
    figures: dict[str, object] = {
        "controllers": load.controllers,
        "messages": load.total_messages,
        "readings_per_message": 8,
        "rounds": rounds,
    }
    with workdir() as tmp:
        for name, broker in (("mosquitto", mosquitto_broker), ("amqtt", amqtt_broker)):
            bare_rates: list[float] = []
            runs: list[IngestRun] = []
            with broker(tmp) as url:
                for r in range(rounds):
                    db = database(Path(tmp), load.controller_ids())
                    # Interleaved, alternating which goes first: both see the same machine.
                    order = ("bare", "ingest") if r % 2 == 0 else ("ingest", "bare")
                    for what in order:
                        if what == "bare":
                            bare_rates.append(asyncio.run(bare(url, f"{name}/bare{r}", load)))
                        else:
                            runs.append(asyncio.run(ingest(url, f"{name}/ingest{r}", load, db)))
                    print(
                        f"{name} round {r + 1}/{rounds}: ingest {runs[-1].readings_per_s:,.0f}"
                        f" readings/s, bare subscriber {bare_rates[-1]:,.0f}",
                        file=sys.stderr,
                    )
            ingest_rate = median(x.readings_per_s for x in runs)
            bare_rate = median(bare_rates)
            figures[name] = {
                "readings_per_s": round(ingest_rate),
                "bare_subscriber_readings_per_s": round(bare_rate),
                "ratio": round(ingest_rate / bare_rate, 3),
                "acks_per_message": round(median(x.acks_per_message for x in runs), 3),
                "rounds_readings_per_s": [round(x.readings_per_s) for x in runs],
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

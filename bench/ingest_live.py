"""Live ingest: one ingest process, one-minute batches of 8 readings from many controllers, QoS 1.

For each broker (Mosquitto, then the embedded amqtt), in the same run, three ways of taking
the same messages:

* ``bare_subscriber_readings_per_s``: the fastest bare receive path, ingest's own MQTT link
  (``ingest.paho_link``) with ingest's subscriptions, which only counts the messages;
* ``idle_readings_per_s``: the ingest worker receiving, validating, committing and
  acknowledging, with every controller online and no charge open;
* ``readings_per_s``: the same at an evening peak, with a charge drawing current on every
  outlet (4,000 open charges), so every reading also feeds its charge's lifecycle and the
  outlet's rise detector, as in the field.

Both ingest runs start from a database like the field's: controllers online (their status
rows written by every batch) and 50,000 stopped charges behind. Ratios: ``ratio`` is the
evening peak ÷ the bare subscriber (target ≥ 0.8 on both brokers), ``peak_vs_idle`` the
evening peak ÷ no charges (target ≥ 0.8, and ≥ 40,000 readings/s through Mosquitto).

The full run repeats the three three times, interleaved with the order rotated, and
reports the medians (each round's figures are in the JSON too): single rounds on this
shared 2-core machine vary by ±20 %. ``acks_per_message`` shows how many ``meter/ack``
messages ingest sent per batch: here each controller sends a batch every few tens of
milliseconds, so acks merge (as they do when edges catch up after an outage). ``--steady``
sends one batch from each of 8,000 controllers instead, as in steady operation, where every
batch costs its own ack.

Rates run from the publisher's first message to the last reading received (bare) or
committed (ingest). The publisher is a separate process (bench/publisher.py) with four
connections. Beside each rate, ``cpu_us_per_reading``: the CPU each role spent per reading
in that round (the publisher, the broker, the consumer, PostgreSQL; ``bench.cpu``) and how
many of the two cores were busy. When both are, a ratio of rates is a ratio of CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median

from bench.common import (
    amqtt_broker,
    database,
    database_mb,
    emit,
    evening_peak,
    mosquitto_broker,
    parser,
    rows,
    workdir,
)
from bench.cpu import CpuByRole
from ingest.paho_link import PahoLink
from ingest.settings import IngestSettings
from ingest.worker import SUBSCRIBED, Ingest
from kernel.settings import MqttUrl
from schemas.topics import Topics

CONTROLLERS = 500
#: Batches per controller in a round: 120 × 500 × 8 = 480,000 readings, rounds of 4–8 s,
#: so that the last write's commit (~0.1 s) weighs little. With 30 (1–2 s rounds) ingest's
#: ratios to the bare subscriber came out 0.06–0.09 lower on Mosquitto.
MESSAGES = 120
MESSAGES_QUICK = 4
HISTORY = 50_000


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


def start_publisher(
    url: str, root: str, load: Workload, connections: int = 4, rate: float = 0.0
) -> subprocess.Popen[str]:
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
            str(connections),
            str(rate),
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


@dataclass
class Round:
    readings_per_s: float
    cpu_us: dict[str, float]  # CPU per reading by role (bench.cpu)
    acks_per_message: float = 0.0


async def bare(url: str, root: str, load: Workload) -> Round:
    """Readings/s through ingest's MQTT link alone: receive and count, nothing else."""
    received = 0
    everything = asyncio.Event()
    connected = asyncio.Event()

    def on_message(_topic: str, _payload: bytes) -> None:
        nonlocal received
        received += 1
        if received == load.total_messages:
            everything.set()

    topics = Topics(root)
    link = PahoLink(
        MqttUrl(url),
        client_id="bench-bare",
        subscriptions=[(topics.all_controllers(kind), 1) for kind in SUBSCRIBED],
        on_message=on_message,
    )
    task = asyncio.create_task(link.run(on_connected=connected.set))
    await connected.wait()
    publisher = start_publisher(url, root, load)
    with CpuByRole() as cpu:
        start = go(publisher)
        await everything.wait()
        elapsed = time.perf_counter() - start
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    publisher.wait(60)
    return Round(load.readings / elapsed, cpu.per_reading_us(load.readings))


async def ingest(url: str, root: str, load: Workload, db: str, connections: int = 4) -> Round:
    """Readings/s from the publisher's first message until ingest has committed them all."""
    settings = IngestSettings(mqtt_url=url, topic_root=root, database_url=db, log_level="WARNING")
    async with Ingest(settings, database_url=db) as worker:
        task = asyncio.create_task(worker.run())
        await worker.ready.wait()
        publisher = start_publisher(url, root, load, connections)
        with CpuByRole() as cpu:
            start = go(publisher)
            while worker.counters.readings < load.readings:  # noqa: ASYNC110 - polls a counter the worker updates
                await asyncio.sleep(0.01)
            elapsed = time.perf_counter() - start
        await asyncio.sleep(settings.ack_max_delay_s + 0.5)  # let the last acks go out
        acks = worker.counters.acks
        task.cancel()
    publisher.wait(60)
    assert rows(db) == load.readings, "not every reading was stored"
    return Round(
        load.readings / elapsed, cpu.per_reading_us(load.readings), acks / load.total_messages
    )


#: The three ways of taking the same messages, rotated between rounds.
KINDS = ("bare", "idle", "peak")


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
        load = Workload(
            controllers=CONTROLLERS, messages=MESSAGES_QUICK if opts.quick else MESSAGES
        )
    rounds = 1 if opts.quick else 3
    figures: dict[str, object] = {
        "controllers": load.controllers,
        "messages": load.total_messages,
        "readings_per_message": 8,
        "open_charges_at_peak": load.controllers * 8,
        "stopped_charges": HISTORY,
        "rounds": rounds,
    }
    with workdir() as tmp:
        for name, broker in (("mosquitto", mosquitto_broker), ("amqtt", amqtt_broker)):
            rates: dict[str, list[float]] = {kind: [] for kind in KINDS}
            cpus: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
            acks: list[float] = []
            with broker(tmp) as url:
                for r in range(rounds):
                    # Interleaved, rotating which goes first: all see the same machine.
                    for kind in KINDS[r % 3 :] + KINDS[: r % 3]:
                        root = f"{name}/{kind}{r}"
                        if kind == "bare":
                            run = asyncio.run(bare(url, root, load))
                        else:
                            db = database(Path(tmp), load.controller_ids())
                            evening_peak(
                                db, load.controller_ids(), charging=kind == "peak", history=HISTORY
                            )
                            run = asyncio.run(ingest(url, root, load, db))
                            acks.append(run.acks_per_message)
                            if kind == "peak":
                                figures["database_mb"] = database_mb(db)
                        rates[kind].append(run.readings_per_s)
                        cpus[kind].append(run.cpu_us)
                    print(
                        f"{name} round {r + 1}/{rounds}: "
                        + ", ".join(f"{k} {rates[k][-1]:,.0f}" for k in KINDS)
                        + " readings/s",
                        file=sys.stderr,
                    )
            peak, idle, bare_rate = (median(rates[k]) for k in ("peak", "idle", "bare"))
            cpu = {kind: _median_figures(cpus[kind]) for kind in KINDS}
            figures[name] = {
                "readings_per_s": round(peak),
                "idle_readings_per_s": round(idle),
                "bare_subscriber_readings_per_s": round(bare_rate),
                "ratio": round(peak / bare_rate, 3),
                "peak_vs_idle": round(peak / idle, 3),
                "idle_ratio": round(idle / bare_rate, 3),
                "acks_per_message": round(median(acks), 3),
                "cpu_us_per_reading": cpu,
                **{f"rounds_{k}": [round(x) for x in rates[k]] for k in KINDS},
            }
            print(
                f"{name}: evening peak {peak:,.0f} readings/s, no charges {idle:,.0f}, bare"
                f" subscriber {bare_rate:,.0f} (peak/bare {peak / bare_rate:.2f}, idle/bare"
                f" {idle / bare_rate:.2f}, peak/idle {peak / idle:.2f}; medians of {rounds})",
                file=sys.stderr,
            )
            for kind in KINDS:
                print(f"  CPU µs per reading, {kind}: {_shown(cpu[kind])}", file=sys.stderr)
    emit("ingest_live", figures)


def _median_figures(rounds: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({key for figures in rounds for key in figures})
    return {key: round(median(f.get(key, 0.0) for f in rounds), 2) for key in keys}


def _shown(figures: dict[str, float]) -> str:
    parts = [f"{k} {v}" for k, v in figures.items() if k not in ("total", "cores")]
    return f"{', '.join(parts)}; total {figures['total']} ({figures['cores']} cores busy)"


if __name__ == "__main__":
    main()

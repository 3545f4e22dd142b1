"""Catch-up ingest: edges back from an outage send 60 minute frames per message.

Figures, in one run against Mosquitto: ``readings_per_s`` through broker → ingest →
PostgreSQL (target ≥ 150,000), ``bare_copy_readings_per_s`` for a binary COPY of the same
rows into a copy of the same table, and their ``ratio``.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import psycopg

from bench.common import batch, database, emit, mosquitto_broker, parser, rows, workdir
from bench.ingest_live import go, start_publisher
from chargeline.settings import IngestSettings
from ingest.store import _OUTLET_COLUMNS, _OUTLET_TYPES
from ingest.triage import minute_time
from ingest.worker import Ingest

CONTROLLERS = 500
FRAMES = 60


async def through_ingest(url: str, db: str, messages: int) -> float:
    total = CONTROLLERS * messages * FRAMES * 8
    settings = IngestSettings(mqtt_url=url, topic_root="catchup", database_url=db, log_level="WARNING")
    async with Ingest(settings, database_url=db) as worker:
        task = asyncio.create_task(worker.run())
        await worker.ready.wait()
        publisher = start_publisher_frames(url, messages)
        start = go(publisher)
        while worker.counters.readings < total:
            await asyncio.sleep(0.01)
        elapsed = time.perf_counter() - start
        task.cancel()
    publisher.wait(60)
    assert rows(db) == total
    return total / elapsed


def start_publisher_frames(url: str, messages: int):  # type: ignore[no-untyped-def]
    import subprocess

    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.publisher", url, "catchup", str(CONTROLLERS), str(messages), str(FRAMES)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def bare_copy(db: str, messages: int) -> float:
    data = [
        (b.controller_id, r.outlet, minute_time(f.minute), r.energy_wh, r.voltage_v, r.current_a, r.breaker_on)
        for m in range(messages)
        for c in range(CONTROLLERS)
        for b in [batch(f"b{c:04d}", m + 1, m * FRAMES, FRAMES)]
        for f in b.frames
        for r in f.outlets
    ]
    with psycopg.connect(db) as conn:
        conn.execute("CREATE TABLE bare_copy (LIKE outlet_readings INCLUDING ALL)")
        conn.commit()
        start = time.perf_counter()
        with conn.cursor().copy(f"COPY bare_copy ({', '.join(_OUTLET_COLUMNS)}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(list(_OUTLET_TYPES))
            for row in data:
                copy.write_row(row)
        conn.commit()
        return len(data) / (time.perf_counter() - start)


def main() -> None:
    args = parser(__doc__).parse_args()
    messages = 1 if args.quick else 4  # per controller: 240,000 or 960,000 readings
    with workdir() as tmp, mosquitto_broker(tmp) as url:
        db = database(Path(tmp), [f"b{c:04d}" for c in range(CONTROLLERS)])
        rate = asyncio.run(through_ingest(url, db, messages))
        copy_rate = bare_copy(db, messages)
    print(f"catch-up ingest {rate:,.0f} readings/s; bare COPY {copy_rate:,.0f} (ratio {rate / copy_rate:.2f})", file=sys.stderr)
    emit("ingest_catchup", {
        "frames_per_message": FRAMES, "readings": CONTROLLERS * messages * FRAMES * 8,
        "readings_per_s": round(rate), "bare_copy_readings_per_s": round(copy_rate),
        "ratio": round(rate / copy_rate, 3),
    })


if __name__ == "__main__":
    main()

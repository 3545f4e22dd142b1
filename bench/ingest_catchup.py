"""Catch-up: 100 controllers back from a day-long outage drain their buffers at once.

Each controller reconnects (its own MQTT connection) with 24 hours of minutes buffered and
sends them as an edge agent does: every batch at once, 60 minute frames per message (the
edge's ``max_frames_per_message``), 24 messages each, 1,152,000 readings in all
(``--quick``: 6 hours). Ingest takes them through the broker, validates, stores and
acknowledges them; the clock runs from the first message to the last reading committed.

Figures, for each broker (Mosquitto, then the embedded amqtt) in one run:
``readings_per_s`` (target ≥ 150,000 on Mosquitto) and, as the baseline,
``bare_copy_readings_per_s``: a binary COPY of the same rows, already decoded, into a copy
of the same table in the same database, which is the least any ingest must do; ``ratio``
is ingest ÷ bare COPY.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import psycopg

from bench.common import (
    amqtt_broker,
    batch,
    database,
    database_mb,
    emit,
    mosquitto_broker,
    parser,
    workdir,
)
from bench.ingest_live import Workload, ingest
from ingest.store import _OUTLET_COLUMNS, _OUTLET_TYPES
from ingest.triage import minute_time

CONTROLLERS = 100
FRAMES = 60


def bare_copy(db: str, load: Workload) -> float:
    data = [
        (
            b.controller_id,
            r.outlet,
            minute_time(f.minute),
            r.energy_wh,
            r.voltage_v,
            r.current_a,
            r.breaker_on,
            r.power_w,
            r.soc_percent,
        )
        for m in range(load.messages)
        for c in range(load.controllers)
        for b in [batch(f"b{c:04d}", m + 1, m * FRAMES, FRAMES)]
        for f in b.frames
        for r in f.outlets
    ]
    with psycopg.connect(db) as conn:
        conn.execute("CREATE TABLE bare_copy (LIKE outlet_readings INCLUDING ALL)")
        conn.commit()
        start = time.perf_counter()
        with conn.cursor().copy(
            f"COPY bare_copy ({', '.join(_OUTLET_COLUMNS)}) FROM STDIN (FORMAT BINARY)"
        ) as copy:
            copy.set_types(list(_OUTLET_TYPES))
            for row in data:
                copy.write_row(row)
        conn.commit()
        return len(data) / (time.perf_counter() - start)


def main() -> None:
    args = parser(__doc__).parse_args()
    hours = 6 if args.quick else 24
    load = Workload(CONTROLLERS, hours * 60 // FRAMES, FRAMES)
    figures: dict[str, object] = {
        "controllers": CONTROLLERS,
        "hours_buffered": hours,
        "frames_per_message": FRAMES,
        "readings": load.readings,
    }
    with workdir() as tmp:
        for name, broker in (("mosquitto", mosquitto_broker), ("amqtt", amqtt_broker)):
            with broker(tmp) as url:
                db = database(Path(tmp), load.controller_ids())
                run = asyncio.run(ingest(url, f"catchup-{name}", load, db, CONTROLLERS))
                copy_rate = bare_copy(db, load)
                figures["database_mb"] = database_mb(db)
            figures[name] = {
                "readings_per_s": round(run.readings_per_s),
                "bare_copy_readings_per_s": round(copy_rate),
                "ratio": round(run.readings_per_s / copy_rate, 3),
            }
            print(
                f"{name}: catch-up ingest {run.readings_per_s:,.0f} readings/s; bare COPY"
                f" {copy_rate:,.0f} (ratio {run.readings_per_s / copy_rate:.2f})",
                file=sys.stderr,
            )
    emit("ingest_catchup", figures)


if __name__ == "__main__":
    main()

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

from bench.common import batch, database, emit, mosquitto_broker, parser, workdir
from bench.ingest_live import Workload, ingest
from ingest.store import _OUTLET_COLUMNS, _OUTLET_TYPES
from ingest.triage import minute_time

CONTROLLERS = 500
FRAMES = 60


def bare_copy(db: str, messages: int) -> float:
    data = [
        (
            b.controller_id,
            r.outlet,
            minute_time(f.minute),
            r.energy_wh,
            r.voltage_v,
            r.current_a,
            r.breaker_on,
        )
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
    messages = 1 if args.quick else 4  # per controller: 240,000 or 960,000 readings
    load = Workload(CONTROLLERS, messages, FRAMES)
    with workdir() as tmp, mosquitto_broker(tmp) as url:
        db = database(Path(tmp), load.controller_ids())
        rate = asyncio.run(ingest(url, "catchup", load, db)).readings_per_s
        copy_rate = bare_copy(db, messages)
    print(
        f"catch-up ingest {rate:,.0f} readings/s; bare COPY {copy_rate:,.0f} (ratio {rate / copy_rate:.2f})",
        file=sys.stderr,
    )
    emit(
        "ingest_catchup",
        {
            "frames_per_message": FRAMES,
            "readings": load.readings,
            "readings_per_s": round(rate),
            "bare_copy_readings_per_s": round(copy_rate),
            "ratio": round(rate / copy_rate, 3),
        },
    )


if __name__ == "__main__":
    main()

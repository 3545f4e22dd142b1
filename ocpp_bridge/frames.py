"""``chargeline ocpp frames STATION``: what a station really said, from the raw frame log."""

from __future__ import annotations

from datetime import datetime

import psycopg

from schemas.errors import InputError


def _time(text: str | None, what: str) -> datetime | None:
    if text is None:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--{what} {text!r} is not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        raise InputError(f"--{what} {text!r} needs a time zone (e.g. Z or +09:00)")
    return parsed


def print_frames(
    url: str, station_id: str, since: str | None, until: str | None, limit: int
) -> int:
    """One line per frame: time, direction (``<-`` from the station, ``->`` to it), text."""
    start, end = _time(since, "since"), _time(until, "until")
    if limit < 1:
        raise InputError("--limit must be at least 1")
    with psycopg.connect(url) as conn:
        known = conn.execute(
            "SELECT 1 FROM ocpp_stations WHERE station_id = %s", (station_id,)
        ).fetchone()
        if known is None:
            raise InputError(f"no OCPP station {station_id!r} in the registry")
        rows = conn.execute(
            "SELECT at, direction, frame FROM ocpp_frames WHERE station_id = %s"
            " AND at >= coalesce(%s, '-infinity'::timestamptz)"
            " AND at <= coalesce(%s, 'infinity'::timestamptz)"
            " ORDER BY at LIMIT %s",
            (station_id, start, end, limit),
        ).fetchall()
    for at, direction, frame in rows:
        arrow = "<-" if direction == "in" else "->"
        print(f"{at.isoformat(timespec='milliseconds')} {arrow} {frame}")
    if not rows:
        print(f"no frames from {station_id} in that time", flush=True)
    return 0

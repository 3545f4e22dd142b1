"""A charge's timeline for the console (pure): its moments in time order, the commands
sent for it and their answers among them, the moments not reached left out."""

from __future__ import annotations

import datetime as dt
from typing import Any


def timeline(page: dict[str, Any]) -> list[tuple[dt.datetime, str]]:
    """The charge's moments in time order (pure)."""
    moments: list[tuple[dt.datetime | None, str]] = [
        (page["requested_at"], "requested"),
        (page["started_at"], "breaker on"),
        (page["rise_at"], "current rose: the car draws"),
        (
            page["stopped_at"],
            f"{page['state']}"
            + (
                f": {page['stop_reason'] or page['failure']}"
                if page["stop_reason"] or page["failure"]
                else ""
            ),
        ),
    ]
    for m in page["commands"]:
        what = "ON" if m["turn_on"] else "OFF"
        moments.append(
            (m["issued_at"], f"{what} sent (generation {m['generation']}, by {m['issued_by']})")
        )
        if m["acked_at"] is not None:
            breaker = (
                "" if m["breaker_on"] is None else f", breaker {'on' if m['breaker_on'] else 'off'}"
            )
            moments.append((m["acked_at"], f"{what} acknowledged: {m['outcome']}{breaker}"))
    return sorted((at, what) for at, what in moments if at is not None)

"""``chargeline site cap show|set|remove``: a site's cap from the command line (the operator
API's ``/v1/sites/{site_id}/caps`` does the same), every change recorded with who made it."""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
from typing import Any

import psycopg

from charging import site_caps
from kernel.times import utc
from schemas.errors import InputError


def _when(text: str | None, what: str) -> float | None:
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"{what} {text!r} is not an ISO 8601 time (2026-12-01T18:00Z)") from None
    if value.tzinfo is None:
        raise InputError(f"{what} {text!r} needs a time zone (Z or +09:00)")
    return value.timestamp()


def _who(by: str | None) -> str:
    return by or f"cli:{getpass.getuser()}"


async def cap(url: str, args: argparse.Namespace, *, now: float) -> int:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        if args.cap_command == "set":
            starts = _when(args.starts, "--from") or now
            window = await site_caps.add_window(
                conn,
                args.site_id,
                cap_a=args.amps,
                starts_at=starts,
                ends_at=_when(args.ends, "--until"),
                reason=args.reason,
                note=args.note,
                set_by=_who(args.by),
                now=now,
            )
            until = (
                "until removed"
                if window.ends_at is None
                else f"until {utc(window.ends_at):%Y-%m-%d %H:%M %Z}"
            )
            print(
                f"site {args.site_id}: cap {window.cap_a:g} A from"
                f" {utc(window.starts_at):%Y-%m-%d %H:%M %Z} {until} ({window.reason});"
                f" window {window.id}, set by {window.set_by}"
            )
            return 0
        if args.cap_command == "remove":
            await site_caps.remove_window(
                conn, args.site_id, args.window_id, removed_by=_who(args.by)
            )
            print(f"site {args.site_id}: cap window {args.window_id} removed")
            return 0
        return await _show(conn, args.site_id, now)


async def _show(conn: psycopg.AsyncConnection[Any], site_id: str, now: float) -> int:
    in_force = await site_caps.cap_of(conn, site_id, now=now)
    print(f"site {site_id}: cap {in_force.amps:g} A now ({in_force.source})")
    for w in await site_caps.windows(conn, site_id, now=now):
        until = (
            "until removed" if w.ends_at is None else f"until {utc(w.ends_at):%Y-%m-%d %H:%M %Z}"
        )
        print(
            f"  window {w.id}: {w.cap_a:g} A from {utc(w.starts_at):%Y-%m-%d %H:%M %Z} {until}"
            f" ({w.reason}, set by {w.set_by})"
        )
    load = await site_caps.recent_load(conn, site_id, since=utc(now - 600))
    if load:
        last = load[-1]
        print(
            f"  measured at {utc(last['at']):%H:%M:%S}: site {last['building_a'] + last['outlets_a']:.1f} A"
            f" (building {last['building_a']:.1f} A, outlets {last['outlets_a']:.1f} A);"
            f" {last['charging']} charging, {last['waiting']} waiting"
        )
    else:
        print("  no allocation in the last 10 minutes (is `chargeline loads` running?)")
    return 0

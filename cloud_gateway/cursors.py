"""Opaque page cursors: the sort key of a page's last item, which the next page starts
after (keyset pagination, so items created or removed meanwhile never shift a page: none
is repeated or skipped).

A cursor is base64url JSON of a short list of strings and numbers. One that does not
decode to the shape a listing expects is refused with a 422 that says so; a client can
neither learn nor reach anything through it that its filters do not already allow.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from typing import TypeVar

from cloud_gateway.problems import Problem

Key = list[str | int | float]
T = TypeVar("T")


def encode(key: Key) -> str:
    raw = json.dumps(key, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, shape: tuple[type, ...]) -> Key:
    """The key in ``cursor``, each item of the type ``shape`` gives (int accepted for
    float); else the 422 problem."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError):
        key = None
    if (
        isinstance(key, list)
        and len(key) == len(shape)
        and all(_fits(v, want) for v, want in zip(key, shape, strict=True))
    ):
        return key
    raise invalid()


def _fits(value: object, want: type) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        return want is str and "\x00" not in value  # no database text can hold one
    return isinstance(value, want) or (want is float and isinstance(value, int))


def invalid() -> Problem:
    """The answer to a cursor no listing of this kind gave."""
    return Problem("invalid-request", "cursor: not a cursor this listing gave")


def page(rows: list[T], limit: int, key: Callable[[T], Key]) -> tuple[list[T], str | None]:
    """From ``limit + 1`` rows fetched: the page (the first ``limit``), and the cursor after
    its last row when more follow (None: the last page)."""
    if len(rows) <= limit:
        return rows, None
    return rows[:limit], encode(key(rows[limit - 1]))

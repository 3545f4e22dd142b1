"""Wire times are Unix seconds; the database's are ``timestamptz``. One place converts."""

from __future__ import annotations

import datetime as dt


def utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, dt.UTC)


def utc_or_none(epoch: float | None) -> dt.datetime | None:
    return None if epoch is None else utc(epoch)


def epoch_or_none(value: dt.datetime | None) -> float | None:
    return None if value is None else value.timestamp()

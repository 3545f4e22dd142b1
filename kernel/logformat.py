"""Log lines as text (the default) or as one JSON object per line, with the ids they concern.

``CHARGELINE_LOG_FORMAT=json`` makes every process write lines a log shipper reads
without parsing text::

    {"time": "2026-12-02T10:33:39.123Z", "level": "WARNING", "logger": "ingest.worker",
     "message": "dead letter from ctl-1 on …", "controller_id": "ctl-1"}

Ids come from two places: ``extra={"controller_id": …}`` on the logging call, and the
context a process binds around a piece of work (``bound(request_id=…)``, ``bind`` for the
whole process): a request's id is then on every line logged while it is served. Only the
ids in ``ID_FIELDS`` are written, so a line never carries more than the message and them.
Text lines stay as they were; the ids are in their messages already.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import time
from collections.abc import Iterator, Mapping
from types import MappingProxyType
from typing import Final

#: The ids a JSON line may carry, in this order.
ID_FIELDS: Final = ("request_id", "client_id", "controller_id", "outlet_id", "charge_id")

FORMATS: Final = ("plain", "json")

TEXT_FORMAT: Final = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_CONTEXT: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "chargeline_log_context", default=MappingProxyType({})
)


def bind(**ids: str | None) -> None:
    """Add ``ids`` to the context of everything logged from here on in this task (and the
    tasks it starts): for a process that is about one thing, such as an edge's controller."""
    _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in ids.items() if v is not None}})


@contextlib.contextmanager
def bound(**ids: str | None) -> Iterator[None]:
    """``ids`` on everything logged inside the block."""
    token = _CONTEXT.set({**_CONTEXT.get(), **{k: v for k, v in ids.items() if v is not None}})
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def current() -> dict[str, str]:
    """The ids bound where this runs."""
    return dict(_CONTEXT.get())


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601, milliseconds), level, logger,
    message, the ids it concerns, and the exception's traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": _utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = _CONTEXT.get()
        for field in ID_FIELDS:
            value = getattr(record, field, None) or context.get(field)
            if value is not None:
                document[field] = str(value)
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        # ensure_ascii: a line is plain ASCII whatever a device or a client sent.
        return json.dumps(document, ensure_ascii=True, default=str)


def formatter(kind: str) -> logging.Formatter:
    """The formatter for ``kind`` (one of ``FORMATS``)."""
    if kind == "json":
        return JsonFormatter()
    if kind == "plain":
        return logging.Formatter(TEXT_FORMAT)
    raise ValueError(f"log format {kind!r}: expected one of {', '.join(FORMATS)}")


def _utc(created: float) -> str:
    seconds = int(created)
    millis = int((created - seconds) * 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"

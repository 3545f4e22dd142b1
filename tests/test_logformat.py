"""Log lines as JSON (``CHARGELINE_LOG_FORMAT=json``) and the request ids they carry."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys

import pytest

from cloud_gateway.request_ids import request_id
from kernel import logformat

pytestmark = pytest.mark.pure


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("ingest.worker", logging.WARNING, __file__, 1, message, args, None)
    made.__dict__.update(extra)
    return made


def test_a_json_line_has_the_time_level_logger_message_and_nothing_else() -> None:
    line = logformat.JsonFormatter().format(record("stored %d readings", 8))
    assert "\n" not in line
    document = json.loads(line)
    assert set(document) == {"time", "level", "logger", "message"}
    assert (document["level"], document["logger"], document["message"]) == (
        "WARNING",
        "ingest.worker",
        "stored 8 readings",
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", document["time"])


def test_ids_come_from_the_call_and_from_the_context_around_it() -> None:
    formatter = logformat.JsonFormatter()
    with logformat.bound(request_id="req-1", client_id="wecharge"):
        inside = json.loads(formatter.format(record("x", controller_id="ctl-7")))
        with logformat.bound(charge_id="c-1"):
            nested = json.loads(formatter.format(record("y")))
        after_nested = json.loads(formatter.format(record("z")))
    outside = json.loads(formatter.format(record("w")))
    assert (inside["request_id"], inside["client_id"], inside["controller_id"]) == (
        "req-1",
        "wecharge",
        "ctl-7",
    )
    assert nested["charge_id"] == "c-1" and nested["request_id"] == "req-1"
    assert "charge_id" not in after_nested
    assert not set(logformat.ID_FIELDS) & set(outside)


def test_an_id_bound_in_one_task_stays_out_of_another() -> None:
    """Each request is served by its own task: its ids must not reach another's lines."""
    seen: dict[str, dict[str, str]] = {}

    async def serve(name: str) -> None:
        logformat.bind(request_id=name)
        await asyncio.sleep(0)
        seen[name] = logformat.current()

    async def main() -> None:
        await asyncio.gather(serve("a"), serve("b"))

    asyncio.run(main())
    assert seen == {"a": {"request_id": "a"}, "b": {"request_id": "b"}}
    assert logformat.current() == {}


def test_a_line_is_ascii_whatever_the_message_holds_and_keeps_the_traceback() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "ctl-\u00e9\n%s", ("\x1b[2J",), sys.exc_info()
        )
    line = logformat.JsonFormatter().format(failed)
    assert line.isascii() and "\n" not in line
    document = json.loads(line)
    assert document["message"] == "ctl-\u00e9\n\x1b[2J"
    assert "ValueError: boom" in document["exception"]


def test_an_unknown_format_is_refused() -> None:
    assert isinstance(logformat.formatter("json"), logformat.JsonFormatter)
    with pytest.raises(ValueError, match="plain, json"):
        logformat.formatter("xml")


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (b"partner-123.a_b", True),
        (b"x" * 64, True),
        (b"x" * 65, False),
        (b"", False),
        (b"two words", False),
        (b"line\nbreak", False),
        (b"\xc3\xa9t\xc3\xa9", False),
    ],
)
def test_a_callers_request_id_is_kept_only_in_the_safe_alphabet(sent: bytes, kept: bool) -> None:
    ident = request_id([(b"accept", b"*/*"), (b"x-request-id", sent)])
    if kept:
        assert ident == sent.decode()
    else:
        assert re.fullmatch(r"[0-9a-f]{16}", ident)


def test_every_call_without_an_id_gets_a_new_one() -> None:
    assert request_id([]) != request_id([])


def test_a_database_url_is_logged_without_its_password() -> None:
    """Every service logs the database it uses at start: never the login's password."""
    from store.database import without_password

    shown = without_password("postgresql://svc:s3cret-Pass@db.example:5432/chargeline")
    assert "s3cret" not in shown and "svc" in shown and "db.example" in shown
    conninfo = without_password("user=svc password=s3cret host=/tmp/pg dbname=cl")
    assert "s3cret" not in conninfo and "***" in conninfo
    assert "s3cret" not in without_password("postgresql://svc:s3cret@[::1")

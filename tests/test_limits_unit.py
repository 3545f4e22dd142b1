"""The pure limits behind the broker's and the servers' defences."""

from __future__ import annotations

import logging

import pytest

from kernel.limits import ConnectionBudget, connection_cap
from kernel.logsafe import FloodFilter, Summarised, shown

pytestmark = pytest.mark.pure


def test_the_budget_caps_per_address_and_in_total_and_forgets_closed_addresses() -> None:
    budget = ConnectionBudget(total=3, per_address=2)
    assert budget.admit("a") is None and budget.admit("a") is None
    assert "2 connections from this address" in str(budget.admit("a"))
    assert budget.admit("b") is None
    assert "cap of 3" in str(budget.admit("c"))
    budget.release("a")
    assert budget.admit("c") is None
    for address in ("a", "b", "c"):
        budget.release(address)
    assert budget.open == 0
    with pytest.raises(ValueError, match="without admit"):
        budget.release("a")
    assert budget.admit("a") is None and budget.admit("a") is None  # "a" starts afresh


def test_the_connection_cap_stays_below_the_file_limit() -> None:
    assert connection_cap(10_000, 1_024) == 960
    assert connection_cap(100, 65_536) == 100


def test_shown_cuts_and_escapes_what_a_client_chose() -> None:
    assert shown("c1") == "'c1'"
    long = "x" * 70_000
    assert shown(long) == repr("x" * 64) + "…(+69936 chars)"
    assert shown("a\nb\x00é") == repr("a\nb\x00\\xe9")
    assert "\n" not in shown("a\nb")


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_flood_of_refusals_is_logged_as_a_few_lines_and_a_summary(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = _Clock()
    summarised = Summarised(logging.getLogger("t"), interval_s=10, burst=2, clock=clock)
    with caplog.at_level(logging.WARNING):
        for i in range(1_000):
            summarised.warning("refusals", "refused %d", i)
        clock.now = 11
        summarised.warning("refusals", "refused %d", 1_000)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused 0",
        "refused 1",
        "… and 998 more refusals in the last 11 s (not logged one by one)",
        "refused 1000",
    ]
    assert summarised.total["refusals"] == 1_001


def test_the_flood_filter_holds_back_library_lines_only() -> None:
    clock = _Clock()
    flood = FloodFilter(interval_s=10, burst=3, clock=clock)

    def record(name: str, msg: str) -> logging.LogRecord:
        return logging.LogRecord(name, logging.WARNING, __file__, 1, msg, None, None)

    passed = [
        flood.filter(record("amqtt.broker", f"Failed to initialize client session: no data ({i})"))
        for i in range(100)
    ]
    assert passed.count(True) == 3 and flood.dropped == 97
    assert all(flood.filter(record("broker.server", "ours")) for _ in range(100))
    huge = record("amqtt.broker", "Other " + "y" * 10_000)
    assert flood.filter(huge) and len(huge.getMessage()) < 600
    clock.now = 10
    assert flood.filter(record("amqtt.broker", "Failed to init again"))

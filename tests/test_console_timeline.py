"""A charge's timeline on the console (``console.timeline``): every moment known,
in time order, commands with their answers; moments not reached are left out."""

from __future__ import annotations

import datetime as dt

import pytest

from cloud_gateway.console.timeline import timeline

pytestmark = pytest.mark.pure

T0 = dt.datetime(2026, 12, 2, 9, 0, tzinfo=dt.UTC)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_a_stopped_charge_reads_in_time_order() -> None:
    page = {
        "requested_at": at(0),
        "started_at": at(2),
        "rise_at": at(61),
        "stopped_at": at(3600),
        "state": "stopped",
        "stop_reason": "partner stopped",
        "failure": None,
        "commands": [
            {
                "generation": 8,
                "turn_on": False,
                "issued_by": "cl_a",
                "issued_at": at(3590),
                "acked_at": at(3600),
                "outcome": "applied",
                "breaker_on": False,
            },
            {
                "generation": 7,
                "turn_on": True,
                "issued_by": "cl_a",
                "issued_at": at(0.5),
                "acked_at": at(2),
                "outcome": "applied",
                "breaker_on": True,
            },
        ],
    }
    assert [what for _, what in timeline(page)] == [
        "requested",
        "ON sent (generation 7, by cl_a)",
        "ON acknowledged: applied, breaker on",
        "breaker on",
        "current rose: the car draws",
        "OFF sent (generation 8, by cl_a)",
        "OFF acknowledged: applied, breaker off",
        "stopped: partner stopped",
    ]


def test_a_start_never_answered_shows_what_happened_only() -> None:
    page = {
        "requested_at": at(0),
        "started_at": None,
        "rise_at": None,
        "stopped_at": at(60),
        "state": "failed",
        "stop_reason": None,
        "failure": "start_timed_out",
        "commands": [
            {
                "generation": 3,
                "turn_on": True,
                "issued_by": "cl_a",
                "issued_at": at(0.5),
                "acked_at": None,
                "outcome": None,
                "breaker_on": None,
            },
        ],
    }
    assert [what for _, what in timeline(page)] == [
        "requested",
        "ON sent (generation 3, by cl_a)",
        "failed: start_timed_out",
    ]

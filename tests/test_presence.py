"""Which presence messages count (charging.status.news): pure, no broker needed."""

from __future__ import annotations

import pytest

from charging.status import news
from kernel.times import utc
from schemas.messages import Presence

pytestmark = pytest.mark.pure

T0 = 1_800_000_000.0


def test_a_birth_after_a_will_is_a_change_and_a_replayed_one_is_not() -> None:
    birth = Presence(controller_id="ctl-a", online=True, since=T0)
    fresh, changed = news([birth], {"ctl-a": (False, utc(T0 - 600))})
    assert fresh == [birth] and changed == [birth]
    fresh, changed = news([birth], {"ctl-a": (True, utc(T0))})  # retained, read again
    assert fresh == [birth] and changed == []


def test_an_older_connections_will_cannot_take_a_newer_one_offline() -> None:
    late_will = Presence(controller_id="ctl-a", online=False, since=T0 - 60)
    assert news([late_will], {"ctl-a": (True, utc(T0))}) == ([], [])


def test_the_birth_of_a_connection_whose_will_already_came_is_old_news() -> None:
    birth = Presence(controller_id="ctl-a", online=True, since=T0)
    assert news([birth], {"ctl-a": (False, utc(T0))}) == ([], [])
    will = Presence(controller_id="ctl-a", online=False, since=T0)
    assert news([will], {"ctl-a": (True, utc(T0))}) == ([will], [will])


def test_a_controller_never_seen_before_comes_online() -> None:
    birth = Presence(controller_id="ctl-new", online=True, since=T0)
    assert news([birth], {}) == ([birth], [birth])

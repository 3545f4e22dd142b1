"""Topic names: one module builds and parses them all."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.topics import Topic, TopicKind, Topics

pytestmark = pytest.mark.pure

cids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)


@given(cids, st.sampled_from([k for k in TopicKind if k is not TopicKind.DESIRED]))
def test_build_then_parse(cid: str, kind: TopicKind) -> None:
    """Every topic built parses back to its kind and controller."""
    topics = Topics()
    assert topics.parse(topics.of(kind, cid)) == Topic(kind, cid)


@given(cids, st.integers(1, 8))
def test_desired_topics_carry_the_outlet(cid: str, outlet: int) -> None:
    """Desired-state topics parse to their outlet number."""
    topics = Topics("site/a")
    assert topics.desired(cid, outlet) == f"site/a/ctl/{cid}/outlet/{outlet}/desired"
    assert topics.parse(topics.desired(cid, outlet)) == Topic(TopicKind.DESIRED, cid, outlet)


@pytest.mark.parametrize(
    "topic",
    [
        "cl/v1/ctl/ABC/meter",
        "cl/v1/ctl/a/outlet/9/desired",
        "cl/v1/ctl/a/outlet/01/desired",
        "cl/v1/ctl/a/unknown",
        "other/ctl/a/meter",
        "cl/v1/ctl//meter",
        "cl/v1/ctl/a/meter/extra",
    ],
)
def test_foreign_topics_parse_to_none(topic: str) -> None:
    """Anything that is not exactly one of ours parses to None."""
    assert Topics().parse(topic) is None


def test_builders_refuse_bad_parts() -> None:
    """Bad controller ids, outlet numbers and roots are refused when building."""
    with pytest.raises(ValueError, match="controller id"):
        Topics().meter("Bad/Id")
    with pytest.raises(ValueError, match="outlet number"):
        Topics().desired("a", 9)
    with pytest.raises(ValueError, match="wildcards"):
        Topics("cl/#")


def test_wildcards_and_shared_subscriptions() -> None:
    """Ingest subscribes to every controller, optionally through a $share group."""
    assert Topics().all_controllers(TopicKind.METER) == "cl/v1/ctl/+/meter"
    assert Topics().shared("ingest", TopicKind.EVENT) == "$share/ingest/cl/v1/ctl/+/event"

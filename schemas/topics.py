"""Every MQTT topic chargeline uses is built and parsed here, and nowhere else.

The tree (DESIGN.md, "MQTT topics"), below a root that defaults to ``cl/v1``::

    {root}/ctl/{cid}/meter                  edge → cloud   MeterBatch
    {root}/ctl/{cid}/meter/ack              cloud → edge   MeterAck
    {root}/ctl/{cid}/event                  edge → cloud   EdgeEvent
    {root}/ctl/{cid}/outlet/{n}/desired     cloud → edge   DesiredState (retained)
    {root}/ctl/{cid}/ack                    edge → cloud   CommandAck
    {root}/ctl/{cid}/state                  edge → cloud   ReportedState (retained)
    {root}/ctl/{cid}/presence               edge → cloud   Presence (retained, also the will)
    {root}/ctl/{cid}/request                cloud → edge   StatusRequest
    {root}/ctl/{cid}/budget                 cloud → edge   Budget (retained)
    {root}/ctl/{cid}/load                   edge → cloud   LoadReport

The root is configurable so that one broker can carry several isolated installations
(the tests give every test its own root).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

CONTROLLER_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
DEFAULT_ROOT = "cl/v1"
MAX_OUTLETS = 8


class TopicKind(enum.StrEnum):
    METER = "meter"
    METER_ACK = "meter/ack"
    EVENT = "event"
    DESIRED = "desired"
    ACK = "ack"
    STATE = "state"
    PRESENCE = "presence"
    REQUEST = "request"
    BUDGET = "budget"
    LOAD = "load"


# Kinds whose topic is {root}/ctl/{cid}/{suffix}; DESIRED carries an outlet number instead.
_SUFFIX_KINDS = {kind.value: kind for kind in TopicKind if kind is not TopicKind.DESIRED}


def is_controller_id(value: str) -> bool:
    return CONTROLLER_ID_RE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed chargeline topic."""

    kind: TopicKind
    controller_id: str
    outlet: int | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    """Builds and parses the topics of one installation (one root)."""

    root: str = DEFAULT_ROOT

    def __post_init__(self) -> None:
        if not self.root or self.root.startswith("/") or self.root.endswith("/"):
            raise ValueError(f"topic root {self.root!r} must be non-empty without outer slashes")
        if any(ch in self.root for ch in "+#\0"):
            raise ValueError(f"topic root {self.root!r} must not contain wildcards")

    # --- builders -----------------------------------------------------------------------
    def controller(self, controller_id: str) -> str:
        if not is_controller_id(controller_id):
            raise ValueError(f"invalid controller id {controller_id!r}")
        return f"{self.root}/ctl/{controller_id}"

    def of(self, kind: TopicKind, controller_id: str) -> str:
        if kind is TopicKind.DESIRED:
            raise ValueError("desired topics need an outlet number: use Topics.desired()")
        return f"{self.controller(controller_id)}/{kind.value}"

    def meter(self, controller_id: str) -> str:
        return self.of(TopicKind.METER, controller_id)

    def meter_ack(self, controller_id: str) -> str:
        return self.of(TopicKind.METER_ACK, controller_id)

    def event(self, controller_id: str) -> str:
        return self.of(TopicKind.EVENT, controller_id)

    def ack(self, controller_id: str) -> str:
        return self.of(TopicKind.ACK, controller_id)

    def state(self, controller_id: str) -> str:
        return self.of(TopicKind.STATE, controller_id)

    def presence(self, controller_id: str) -> str:
        return self.of(TopicKind.PRESENCE, controller_id)

    def request(self, controller_id: str) -> str:
        return self.of(TopicKind.REQUEST, controller_id)

    def budget(self, controller_id: str) -> str:
        return self.of(TopicKind.BUDGET, controller_id)

    def load(self, controller_id: str) -> str:
        return self.of(TopicKind.LOAD, controller_id)

    def desired(self, controller_id: str, outlet: int) -> str:
        if not 1 <= outlet <= MAX_OUTLETS:
            raise ValueError(f"outlet number {outlet} is outside 1..{MAX_OUTLETS}")
        return f"{self.controller(controller_id)}/outlet/{outlet}/desired"

    # --- subscriptions ------------------------------------------------------------------
    def all_controllers(self, kind: TopicKind) -> str:
        """Wildcard filter matching ``kind`` for every controller."""
        if kind is TopicKind.DESIRED:
            return f"{self.root}/ctl/+/outlet/+/desired"
        return f"{self.root}/ctl/+/{kind.value}"

    def filter_for(self, kind: TopicKind, who: str) -> str:
        """The filter of ``kind`` for ``who``: a controller id, ``+`` (every controller) or
        ``%u`` (the connected user, as Mosquitto's ACL patterns write it). Desired topics
        cover every outlet."""
        if who not in ("+", "%u") and not is_controller_id(who):
            raise ValueError(f"invalid controller id {who!r}")
        if kind is TopicKind.DESIRED:
            return f"{self.root}/ctl/{who}/outlet/+/desired"
        return f"{self.root}/ctl/{who}/{kind.value}"

    def shared(self, group: str, kind: TopicKind) -> str:
        """``$share/{group}/…`` filter so several ingest workers split the load."""
        return f"$share/{group}/{self.all_controllers(kind)}"

    # --- parser -------------------------------------------------------------------------
    def parse(self, topic: str) -> Topic | None:
        """Parse a topic of this root; ``None`` for anything that is not one of ours."""
        prefix = f"{self.root}/ctl/"
        if not topic.startswith(prefix):
            return None
        cid, _, rest = topic[len(prefix) :].partition("/")
        if not is_controller_id(cid):
            return None
        kind = _SUFFIX_KINDS.get(rest)
        if kind is not None:
            return Topic(kind, cid)
        parts = rest.split("/")
        if len(parts) == 3 and parts[0] == "outlet" and parts[2] == "desired":
            number = parts[1]
            if number.isdigit() and len(number) == 1 and 1 <= int(number) <= MAX_OUTLETS:
                return Topic(TopicKind.DESIRED, cid, int(number))
        return None


# --- filters ------------------------------------------------------------------------------
SHARE_PREFIX = "$share/"


def unshared(topic_filter: str) -> str:
    """``$share/{group}/{filter}`` → ``{filter}``; other filters unchanged."""
    if topic_filter.startswith(SHARE_PREFIX):
        _, _, rest = topic_filter[len(SHARE_PREFIX) :].partition("/")
        return rest
    return topic_filter


def matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` (no wildcards) matches ``topic_filter`` (MQTT 3.1.1 §4.7).

    A filter starting with a wildcard does not match topics starting with ``$``.
    """
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    want, got = topic_filter.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(got) or (level != "+" and level != got[i]):
            return False
    return len(want) == len(got)


def covers(allowed: str, requested: str) -> bool:
    """Whether every topic that filter ``requested`` can match is matched by ``allowed``.

    ``+`` in ``requested`` is covered only by ``+`` or ``#``; ``#`` only by ``#``.
    """
    if requested.startswith("$") and allowed[:1] in ("+", "#"):
        return False
    want, got = allowed.split("/"), requested.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(got) or got[i] == "#":
            return False
        if level != "+" and (got[i] == "+" or level != got[i]):
            return False
    return len(want) == len(got)

"""Who may publish and subscribe where: the broker's access policy, as data.

One table of grants serves every broker: the amqtt plugins (``broker/plugins.py``) decide
with ``Policy.allows``, and the exports (``broker/export.py``) write the same grants as
Mosquitto ACL lines and EMQX rules, so switching brokers changes nothing for anyone.

- A **controller** (identity name = controller id = MQTT client id) writes only its own
  ``meter``, ``event``, ``ack``, ``state``, ``presence`` and ``load`` topics and reads only
  its own ``desired``, ``meter/ack``, ``request`` and ``budget`` topics. Its grants are written with ``%u``, the
  connected identity, which is how Mosquitto's ``pattern`` lines say it.
- **ingest** reads what controllers write and answers ``meter/ack``.
- **gateway** writes commands (``desired``) and status requests, and reads command acks.
- **ocpp** (the OCPP bridge, ``chargeline ocpp``) speaks for its stations: what a controller
  may write and read, on the topics of registered stations only (``Policy.stations``), never
  on a controller's. It subscribes once with wildcards (a session holds at most
  ``broker_max_subscriptions`` filters, and a bridge serves thousands of stations); the
  embedded broker then delivers it only the stations' messages, retained ones included.
- **loads** (the sites' allocator, ``chargeline loads``) reads every controller's ``load``
  reports and writes each one's retained ``budget``.
- A **station**'s identity is for its OCPP connection; it has no grants at the broker.

Nothing else is granted: no ``$SYS``, no ``#``, no other controller's subtree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from schemas.topics import TopicKind, Topics, covers, matches, unshared


class Role(enum.StrEnum):
    CONTROLLER = "controller"
    INGEST = "ingest"
    GATEWAY = "gateway"
    OCPP = "ocpp"
    STATION = "station"
    LOADS = "loads"


class Access(enum.StrEnum):
    READ = "read"  # subscribe and receive
    WRITE = "write"  # publish


@dataclass(frozen=True, slots=True)
class Grant:
    role: Role
    access: Access
    topic_filter: str  # may contain %u: the connected identity

    def for_identity(self, name: str) -> str:
        return self.topic_filter.replace("%u", name)


_GRANTS: tuple[tuple[Role, Access, str, tuple[TopicKind, ...]], ...] = (
    (
        Role.CONTROLLER,
        Access.WRITE,
        "%u",
        (
            TopicKind.METER,
            TopicKind.EVENT,
            TopicKind.ACK,
            TopicKind.STATE,
            TopicKind.PRESENCE,
            TopicKind.LOAD,
        ),
    ),
    (
        Role.CONTROLLER,
        Access.READ,
        "%u",
        (TopicKind.DESIRED, TopicKind.METER_ACK, TopicKind.REQUEST, TopicKind.BUDGET),
    ),
    (
        Role.INGEST,
        Access.READ,
        "+",
        (TopicKind.METER, TopicKind.EVENT, TopicKind.ACK, TopicKind.STATE, TopicKind.PRESENCE),
    ),
    (Role.INGEST, Access.WRITE, "+", (TopicKind.METER_ACK,)),
    (Role.GATEWAY, Access.READ, "+", (TopicKind.ACK,)),
    (Role.GATEWAY, Access.WRITE, "+", (TopicKind.DESIRED, TopicKind.REQUEST)),
    # The bridge's grants name every controller; ``Policy.allows`` then keeps to stations.
    (
        Role.OCPP,
        Access.WRITE,
        "+",
        (
            TopicKind.METER,
            TopicKind.EVENT,
            TopicKind.ACK,
            TopicKind.STATE,
            TopicKind.PRESENCE,
            TopicKind.LOAD,
        ),
    ),
    (
        Role.OCPP,
        Access.READ,
        "+",
        (TopicKind.DESIRED, TopicKind.METER_ACK, TopicKind.REQUEST, TopicKind.BUDGET),
    ),
    (Role.LOADS, Access.READ, "+", (TopicKind.LOAD,)),
    (Role.LOADS, Access.WRITE, "+", (TopicKind.BUDGET,)),
)

#: The topics a role may leave a retained message on: the ones the wire contract retains
#: (a controller's last state and presence, the gateway's desired state). Anything else
#: published with the retain flag is delivered but not kept, so a client cannot park up
#: to a packet's worth of data on each of its topics.
_RETAINED: dict[Role, frozenset[TopicKind]] = {
    Role.CONTROLLER: frozenset({TopicKind.STATE, TopicKind.PRESENCE}),
    Role.GATEWAY: frozenset({TopicKind.DESIRED}),
    Role.LOADS: frozenset({TopicKind.BUDGET}),
    Role.INGEST: frozenset(),
    Role.OCPP: frozenset({TopicKind.STATE, TopicKind.PRESENCE}),
    Role.STATION: frozenset(),
}


class Policy:
    """The grants for one topic root, and the decisions made from them."""

    def __init__(self, topics: Topics, stations: frozenset[str] = frozenset()) -> None:
        self.topics = topics
        #: The controller ids of OCPP stations: the only ones the bridge may speak for.
        self.stations = stations
        self.grants = tuple(
            Grant(role, access, topics.filter_for(kind, who))
            for role, access, who, kinds in _GRANTS
            for kind in kinds
        )
        self._cache: dict[tuple[str, Role, Access, str, bool], bool] = {}

    def may_retain(self, *, name: str, role: Role, topic: str) -> bool:
        """May ``name`` leave a retained message on ``topic`` (which it may publish to)?"""
        parsed = self.topics.parse(topic)
        return (
            parsed is not None
            and parsed.kind in _RETAINED[role]
            and self.allows(name=name, role=role, access=Access.WRITE, topic=topic)
        )

    def for_role(self, role: Role) -> list[Grant]:
        return [grant for grant in self.grants if grant.role is role]

    def with_stations(self, stations: frozenset[str]) -> None:
        """The registry's stations changed: the bridge may speak for these from now on."""
        if stations != self.stations:
            self.stations = stations
            self._cache.clear()

    def filters_for(self, name: str, role: Role) -> list[tuple[Access, str]]:
        """What ``name`` may do, as the exports write a service's lines. The bridge writes
        on each station's topics, one set per station; it reads through its wildcard
        subscriptions, which Mosquitto and EMQX can only grant whole (there it may read
        every controller's commands, and still write for stations only)."""
        if role is Role.OCPP:
            return [
                (access, self.topics.filter_for(kind, station))
                for station in sorted(self.stations)
                for r, access, _, kinds in _GRANTS
                if r is Role.OCPP and access is Access.WRITE
                for kind in kinds
            ] + [(g.access, g.topic_filter) for g in self.for_role(role) if g.access is Access.READ]
        return [(g.access, g.for_identity(name)) for g in self.for_role(role)]

    def _station_topic(self, topic: str) -> bool:
        """Is ``topic`` (or filter) under one station's subtree, named without wildcards?"""
        prefix = f"{self.topics.root}/ctl/"
        if not topic.startswith(prefix):
            return False
        return topic[len(prefix) :].partition("/")[0] in self.stations

    def allows(
        self, *, name: str, role: Role, access: Access, topic: str, subscribing: bool = False
    ) -> bool:
        """May ``name`` (an identity of ``role``) publish to / receive ``topic``?

        With ``subscribing``, ``topic`` is a filter, allowed only when every topic it can
        match is granted; a ``$share/{group}/`` prefix is judged by the filter behind it.
        """
        key = (name, role, access, topic, subscribing)
        verdict = self._cache.get(key)
        if verdict is None:
            if subscribing:
                topic = unshared(topic)
            check = covers if subscribing else matches
            verdict = any(
                check(grant.for_identity(name), topic)
                for grant in self.grants
                if grant.role is role and grant.access is access
            ) and (role is not Role.OCPP or subscribing or self._station_topic(topic))
            if len(self._cache) > 100_000:  # bounded: a client inventing topics cannot grow it
                self._cache.clear()
            self._cache[key] = verdict
        return verdict

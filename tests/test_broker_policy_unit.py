"""The access policy, topic filters, password hashes and exports, without a broker."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker import export, identities
from broker.identities import Identity, Pbkdf2
from broker.policy import Access, Policy, Role
from schemas.topics import TopicKind, Topics, covers, matches

pytestmark = pytest.mark.processes

cids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,20}", fullmatch=True)
POLICY = Policy(Topics())
T = Topics()


def allows(name: str, role: Role, access: Access, topic: str, *, subscribing: bool = False) -> bool:
    return POLICY.allows(name=name, role=role, access=access, topic=topic, subscribing=subscribing)


# --- topic filters ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/d", False),
        ("a/#", "a", True),  # "#" includes the parent level (MQTT 3.1.1 §4.7.1.2)
        ("a/#", "a/b/c", True),
        ("#", "$SYS/broker/uptime", False),  # wildcards do not reach $ topics
        ("+/broker", "$SYS/broker", False),
        ("$SYS/#", "$SYS/broker", True),
        ("a/b", "a/b/c", False),
    ],
)
def test_topic_matching_follows_mqtt(topic_filter: str, topic: str, expected: bool) -> None:
    """Filters match topics as MQTT 3.1.1 §4.7 says, $ topics included."""
    assert matches(topic_filter, topic) is expected


@pytest.mark.parametrize(
    ("allowed", "requested", "expected"),
    [
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/+/c", True),
        ("a/b/c", "a/+/c", False),  # "+" would reach a/x/c too
        ("a/+/c", "a/#", False),
        ("a/#", "a/+/c", True),
        ("a/#", "a/#", True),
        ("#", "$SYS/#", False),
    ],
)
def test_a_subscription_is_covered_only_if_every_topic_it_matches_is(
    allowed: str, requested: str, expected: bool
) -> None:
    """A subscription filter is granted only inside a granted filter."""
    assert covers(allowed, requested) is expected


@given(cids, cids, st.sampled_from(list(TopicKind)))
def test_a_controller_reaches_only_its_own_topics(me: str, other: str, kind: TopicKind) -> None:
    """Whatever the topic kind, a controller's rights on another controller's topic are none,
    and on its own exactly the DESIGN's: write what it reports, read what it is sent."""
    topic = T.desired(me, 1) if kind is TopicKind.DESIRED else T.of(kind, me)
    writes = kind in (
        TopicKind.METER,
        TopicKind.EVENT,
        TopicKind.ACK,
        TopicKind.STATE,
        TopicKind.PRESENCE,
        TopicKind.LOAD,
    )
    assert allows(me, Role.CONTROLLER, Access.WRITE, topic) is writes
    assert allows(me, Role.CONTROLLER, Access.READ, topic) is (not writes)
    if other != me:
        theirs = T.desired(other, 1) if kind is TopicKind.DESIRED else T.of(kind, other)
        assert not allows(me, Role.CONTROLLER, Access.WRITE, theirs)
        assert not allows(me, Role.CONTROLLER, Access.READ, theirs)


@pytest.mark.parametrize(
    "topic_filter",
    [
        "#",
        "+/#",
        "$SYS/#",
        "cl/v1/#",
        "cl/v1/ctl/+/request",
        "cl/v1/ctl/me/#",
        "cl/v1/ctl/+/outlet/+/desired",
    ],
)
def test_no_wildcard_reaches_beyond_a_controllers_subtree(topic_filter: str) -> None:
    """Broad subscriptions are refused outright, not filtered later."""
    assert not allows("me", Role.CONTROLLER, Access.READ, topic_filter, subscribing=True)


def test_a_controller_may_subscribe_to_all_of_its_own_outlets_at_once() -> None:
    assert allows(
        "me", Role.CONTROLLER, Access.READ, "cl/v1/ctl/me/outlet/+/desired", subscribing=True
    )


def test_services_have_their_own_rights() -> None:
    """Ingest reads what controllers send and answers meter acks (also as a $share member);
    the gateway sends commands and status requests and reads command acks; neither can
    do the other's job."""
    meters = T.filter_for(TopicKind.METER, "+")
    assert allows("svc_ingest", Role.INGEST, Access.READ, meters, subscribing=True)
    assert allows(
        "svc_ingest", Role.INGEST, Access.READ, f"$share/ingest/{meters}", subscribing=True
    )
    assert allows("svc_ingest", Role.INGEST, Access.WRITE, T.meter_ack("c1"))
    assert not allows("svc_ingest", Role.INGEST, Access.WRITE, T.desired("c1", 1))
    assert allows("svc_gateway", Role.GATEWAY, Access.WRITE, T.desired("c1", 1))
    assert allows("svc_gateway", Role.GATEWAY, Access.WRITE, T.request("c1"))
    assert allows(
        "svc_gateway", Role.GATEWAY, Access.READ, T.filter_for(TopicKind.ACK, "+"), subscribing=True
    )
    assert not allows("svc_gateway", Role.GATEWAY, Access.READ, meters, subscribing=True)
    assert not allows("svc_gateway", Role.GATEWAY, Access.WRITE, T.meter("c1"))


# --- hashes -----------------------------------------------------------------------------


def test_the_pbkdf2_hash_is_the_one_mosquitto_passwd_writes(tmp_path: Path) -> None:
    """Our $7$ line verifies like one from mosquitto_passwd (same scheme, same fields)."""
    stored = identities.pbkdf2_hash("s3cret")
    assert Pbkdf2.parse(stored).verify("s3cret")
    assert not Pbkdf2.parse(stored).verify("s3cret!")
    reference = tmp_path / "pw"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(reference), "u", "s3cret"], check=True)
    theirs = reference.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$") and Pbkdf2.parse(theirs).verify("s3cret")


def test_argon2_checks_the_password() -> None:
    stored = identities.argon2_hash("s3cret")
    assert stored.startswith("$argon2id$")
    assert identities.argon2_verify(stored, "s3cret")
    assert not identities.argon2_verify(stored, "s3cret!")
    assert not identities.argon2_verify("not a hash", "s3cret")


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("svc_ingest", Role.CONTROLLER),
        ("Bad", Role.CONTROLLER),
        ("ingest", Role.INGEST),
        ("svc_a/b", Role.GATEWAY),
    ],
)
def test_identity_names_cannot_be_confused(name: str, role: Role) -> None:
    """Controller ids and service names never overlap, and neither can hold a wildcard."""
    with pytest.raises(identities.IdentityError):
        identities.check_name(name, role)


# --- exports ------------------------------------------------------------------------------


def _identity(name: str, role: Role, password: str, *, revoked: bool = False) -> Identity:
    return Identity(
        name, role, identities.argon2_hash(password), identities.pbkdf2_hash(password), revoked
    )


KNOWN = [
    _identity("c1", Role.CONTROLLER, "p1"),
    _identity("c2", Role.CONTROLLER, "p2", revoked=True),
    _identity("svc_ingest", Role.INGEST, "pi"),
    _identity("svc_gateway", Role.GATEWAY, "pg"),
]


def test_the_mosquitto_acl_says_what_the_policy_says(tmp_path: Path) -> None:
    """Services get user blocks with their grants; controllers get %u patterns; a revoked
    controller is denied everything; revoked identities have no password line."""
    written = export.mosquitto(
        tmp_path,
        policy=POLICY,
        identities=KNOWN,
        listeners=export.Listeners("127.0.0.1:1883"),
        max_packet_bytes=65536,
        persistence_dir=tmp_path / "data",
        user="root",
    )
    conf, passwords, acl = (p.read_text() for p in written)
    assert "allow_anonymous false" in conf and "max_packet_size 65536" in conf
    assert "use_username_as_clientid true" in conf.split("listener 1883 127.0.0.1")[1]
    assert [line.split(":")[0] for line in passwords.splitlines()] == [
        "c1",
        "svc_ingest",
        "svc_gateway",
    ]
    assert (tmp_path / "passwords").stat().st_mode & 0o077 == 0
    assert "pattern write cl/v1/ctl/%u/meter" in acl
    assert "pattern read cl/v1/ctl/%u/outlet/+/desired" in acl
    gateway = acl.split("user svc_gateway\n")[1].split("\n\n")[0].splitlines()
    assert sorted(gateway) == [
        "topic read cl/v1/ctl/+/ack",
        "topic write cl/v1/ctl/+/outlet/+/desired",
        "topic write cl/v1/ctl/+/request",
    ]
    assert "user c2\ntopic deny #" in acl


def test_the_emqx_users_verify_with_emqx_pbkdf2_scheme(tmp_path: Path) -> None:
    """EMQX's built-in database takes PBKDF2-SHA512 as hex with the salt as text: the
    exported users check out against their passwords under exactly that scheme."""
    conf_path, users_path, acl_path = export.emqx(
        tmp_path,
        policy=POLICY,
        identities=KNOWN,
        listeners=export.Listeners("127.0.0.1:1883"),
        max_packet_bytes=65536,
    )
    users = {u["user_id"]: u for u in json.loads(users_path.read_text())}
    assert set(users) == {"c1", "svc_ingest", "svc_gateway"}
    for name, password in (("c1", "p1"), ("svc_ingest", "pi")):
        key = hashlib.pbkdf2_hmac(
            "sha512", password.encode(), users[name]["salt"].encode(), 1000, 64
        )
        assert key.hex() == users[name]["password_hash"]
    acl = acl_path.read_text()
    assert '{allow, all, publish, ["cl/v1/ctl/${username}/meter"]}.' in acl
    assert acl.rstrip().endswith("{deny, all}.")
    assert "iterations = 1000" in conf_path.read_text()

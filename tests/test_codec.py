"""The wire contract: round trips, hard limits, and nothing but CodecError for bad bytes."""

from __future__ import annotations

import contextlib
import math

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import (
    MAX_PAYLOAD_BYTES,
    MESSAGE_TYPES,
    WIRE_VERSION,
    CodecError,
    decode,
    encode,
)
from schemas.messages import (
    CommandAck,
    CommandOutcome,
    DesiredState,
    EdgeEvent,
    EdgeEventKind,
    MeterAck,
    MeterBatch,
    MeterFrame,
    OutletReading,
    OutletState,
    Presence,
    ReportedState,
    StatusRequest,
)
from schemas.topics import TopicKind

pytestmark = pytest.mark.pure

cids = st.from_regex(r"[a-z0-9][a-z0-9-]{0,62}", fullmatch=True)
times = st.floats(min_value=946_684_800, max_value=4_102_444_800, allow_nan=False)
minutes = st.integers(min_value=946_684_800 // 60 + 1, max_value=4_102_444_800 // 60).map(
    lambda m: m * 60
)
energy = st.floats(min_value=0, max_value=1e13, allow_nan=False)
readings = st.builds(
    OutletReading,
    st.integers(1, 8),
    energy,
    st.floats(0, 1000, allow_nan=False),
    st.floats(0, 500, allow_nan=False),
    st.booleans(),
    st.none() | st.floats(0, 1e6, allow_nan=False),
    st.none() | st.floats(0, 100, allow_nan=False),
)


@st.composite
def frames(draw: st.DrawFn) -> MeterFrame:
    numbers = draw(st.lists(st.integers(1, 8), max_size=8, unique=True))
    outlets = tuple(draw(readings)._replace(outlet=n) for n in numbers)
    return MeterFrame(minute=draw(minutes), main_energy_wh=draw(energy), outlets=outlets)


batches = st.builds(
    MeterBatch,
    cids,
    st.integers(1, 2**63 - 1),
    st.lists(frames(), min_size=1, max_size=5, unique_by=lambda f: f.minute).map(tuple),
)
#: Text the wire accepts: anything but control characters.
texts = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=50)

others = st.one_of(
    st.builds(
        MeterAck,
        cids,
        st.lists(st.integers(1, 2**63 - 1), max_size=20).map(tuple),
        st.none() | times,
    ),
    st.builds(
        EdgeEvent,
        cids,
        times,
        st.sampled_from(EdgeEventKind),
        st.integers(1, 8),
        st.integers(0, 2**40),
        st.floats(0, 100),
        st.booleans(),
        texts,
        st.floats(0, 1e13),
        st.floats(0, 500),
    ),
    st.builds(
        DesiredState,
        cids,
        st.integers(1, 8),
        st.booleans(),
        st.integers(0, 2**40),
        st.none() | texts.filter(bool),
        st.none() | times,
        times,
    ),
    st.builds(
        CommandAck,
        cids,
        st.integers(1, 8),
        st.integers(0, 2**40),
        st.sampled_from(CommandOutcome),
        st.booleans(),
        times,
        st.none() | st.floats(0, 1e13),
    ),
    st.builds(
        ReportedState,
        cids,
        texts,
        times,
        st.lists(
            st.builds(OutletState, st.integers(1, 8), st.booleans(), st.integers(0, 9)), max_size=8
        ).map(tuple),
    ),
    st.builds(Presence, cids, st.booleans(), times, st.none() | texts),
    st.builds(StatusRequest, cids, texts, times, st.integers(1, 8)),
)
KIND_OF = {cls: kind for kind, cls in MESSAGE_TYPES.items()}


@given(batches)
def test_meter_batches_round_trip(batch: MeterBatch) -> None:
    """Any valid meter batch decodes to exactly what was encoded."""
    assert decode(TopicKind.METER, encode(batch)) == batch


@given(others)
def test_every_other_message_round_trips(message: tuple) -> None:  # type: ignore[type-arg]
    """Every message type decodes to exactly what was encoded."""
    assert decode(KIND_OF[type(message)], encode(message)) == message


def test_a_meter_ack_from_a_cloud_older_than_its_time_field_still_decodes() -> None:
    """Acks without ``at`` decode (the edge then learns no clock from them)."""
    old = msgpack.packb((WIRE_VERSION, "ctl-a", [3, 4]))
    assert decode(TopicKind.METER_ACK, old) == MeterAck(controller_id="ctl-a", seqs=(3, 4), at=None)


def test_an_ack_from_an_edge_older_than_its_meter_field_still_decodes() -> None:
    old = msgpack.packb((WIRE_VERSION, "ctl-a", 3, 7, "applied", True, 1_800_000_000.0))
    ack = decode(TopicKind.ACK, old)
    assert (ack.generation, ack.outcome, ack.energy_wh) == (7, CommandOutcome.APPLIED, None)


@settings(max_examples=500)
@given(st.binary(max_size=2000), st.sampled_from(list(TopicKind)))
def test_arbitrary_bytes_raise_only_codec_error(data: bytes, kind: TopicKind) -> None:
    """Random bytes either decode or raise CodecError; nothing else escapes."""
    try:
        decode(kind, data)
    except CodecError as exc:
        assert exc.reason


@settings(max_examples=300)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**63), 2**64 - 1)
        | st.floats()
        | st.text(max_size=5),
        lambda inner: st.lists(inner, max_size=4),
        max_leaves=30,
    )
)
def test_arbitrary_msgpack_structures_raise_only_codec_error(value: object) -> None:
    """Well-formed msgpack of the wrong shape raises CodecError."""
    with contextlib.suppress(CodecError):
        decode(TopicKind.METER, msgpack.packb([1, value]))


def _nested(depth: int, leaf: object, *, as_map: bool) -> object:
    value = leaf
    for _ in range(depth):
        value = {"k": value} if as_map else [value]
    return value


@settings(max_examples=200)
@given(
    kind=st.sampled_from(list(TopicKind)),
    depth=st.integers(0, 3000),
    leaf=st.none()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=300)
    | st.binary(max_size=300),
    as_map=st.booleans(),
    at=st.integers(0, 7),
)
def test_deeply_nested_payloads_raise_only_codec_error(
    kind: TopicKind, depth: int, leaf: object, as_map: bool, at: int
) -> None:
    """Arrays or maps nested up to 3,000 deep, anywhere in a message, give a CodecError
    whose reason is short (no unbounded repr), never RecursionError or anything else."""
    fields: list[object] = [WIRE_VERSION, "ctl-1", 1, 1, 1, 1, 1, 1]
    fields[at] = _nested(depth, leaf, as_map=as_map)
    try:
        payload = msgpack.packb(fields)
    except (ValueError, TypeError):  # msgpack's own packer refuses the deepest ones
        payload = b"\x91" * depth + b"\xc0"
    try:
        decode(kind, payload)
    except CodecError as exc:
        assert exc.reason
        assert len(str(exc)) < 400


@pytest.mark.parametrize("kind", list(TopicKind))
def test_the_poison_from_the_field_is_a_codec_error(kind: TopicKind) -> None:
    """An array nested 1,000 deep (found by an outside check) is refused with a reason."""
    with pytest.raises(CodecError) as caught:
        decode(kind, b"\x91" * 1000 + b"\xc0")
    assert "nested deeper than" in caught.value.reason


@settings(max_examples=50)
@given(st.integers(1, 2000), st.integers(1, 2000))
def test_wide_payloads_raise_only_codec_error(width: int, strlen: int) -> None:
    """Wide arrays of long strings are refused quickly with a short reason."""
    payload = msgpack.packb([WIRE_VERSION, "ctl-1", 1, ["x" * strlen] * width])
    try:
        decode(TopicKind.METER, payload)
    except CodecError as exc:
        assert len(str(exc)) < 400


GOOD = MeterBatch(
    controller_id="ctl-1",
    seq=7,
    frames=(
        MeterFrame(
            minute=1_767_225_600,
            main_energy_wh=10.0,
            outlets=(
                OutletReading(
                    outlet=1, energy_wh=5.0, voltage_v=200.0, current_a=3.0, breaker_on=True
                ),
            ),
        ),
    ),
)


def tampered(path: tuple[int, ...], value: object) -> bytes:
    raw = msgpack.unpackb(encode(GOOD))
    target = raw
    for index in path[:-1]:
        target = target[index]
    target[path[-1]] = value
    return msgpack.packb(raw)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (
            tampered((3, 0, 2, 0, 3), math.nan),
            "frames[0].outlets[0].current_a: Input should be a finite number",
        ),
        (tampered((3, 0, 2, 0, 3), math.inf), "frames[0].outlets[0].current_a"),
        (
            tampered((3, 0, 2, 0, 0), 9),
            "frames[0].outlets[0].outlet: Input should be less than or equal to 8",
        ),
        (tampered((3, 0, 2, 0, 2), 900.0), "frames[0].outlets[0].voltage_v"),
        (tampered((3, 0, 2, 0, 1), -1.0), "frames[0].outlets[0].energy_wh"),
        (tampered((3, 0, 0), 1_767_225_601), "frames[0].minute: Input should be a multiple of 60"),
        (tampered((2,), "7"), "seq: Input should be a valid integer"),
        (tampered((1,), "CTL_1"), "controller_id: String should match pattern"),
        (tampered((0,), 3), "unsupported wire version 3 (this side speaks 1, 2)"),
        (
            tampered((3, 0, 2, 0, 3), 150.0),
            "frames[0].outlets[0].current_a: at most 100 A in wire version 1 (got 150)",
        ),
        (
            tampered((3, 0, 2, 0), [1, 5.0, 200.0, 3.0, True, 600.0, None]),
            "frames[0].outlets[0]: wire version 1 readings have 5 fields, got 7",
        ),
        (tampered((3,), []), "frames: Tuple should have at least 1 item"),
        (tampered((3, 0, 2), [[1, 5.0, 200.0, 3.0, True]] * 2), "outlet numbers repeat"),
        (encode(GOOD)[:-3], "not valid msgpack"),
        (encode(GOOD) + b"\x00", "trailing bytes"),
        (b"\xdd\xff\xff\xff\xff", "exceeds max_array_len"),
        (b"\xdb\x7f\xff\xff\xff", "not valid msgpack"),
        (msgpack.packb({"version": 1}), "expected an array"),
        (b"\x91" * 5000, "not valid msgpack"),
        (b"\x00" * (MAX_PAYLOAD_BYTES + 1), "exceeds the 262144 byte limit"),
    ],
)
def test_bad_payloads_name_what_is_wrong(payload: bytes, reason: str) -> None:
    """Each kind of bad payload gets a CodecError that says precisely what is wrong."""
    with pytest.raises(CodecError) as caught:
        decode(TopicKind.METER, payload)
    assert reason in str(caught.value)


@pytest.mark.parametrize("text", ["a\x00b", "line\nbreak", "\x7f"])
def test_control_characters_in_text_are_refused(text: str) -> None:
    """PostgreSQL text cannot hold NUL: such a payload must become a dead letter, not a
    write that fails for ever."""
    event = EdgeEvent(
        controller_id="ctl-1",
        at=1.8e9,
        kind=EdgeEventKind.BREAKER_SWITCHED,
        outlet=1,
        generation=1,
        current_a=0.0,
        breaker_on=False,
        detail=text,
        energy_wh=0.0,
        voltage_v=200.0,
    )
    with pytest.raises(CodecError) as caught:
        decode(TopicKind.EVENT, encode(event))
    assert "detail: String should match pattern" in str(caught.value)


def test_array_shaped_payload_is_compact() -> None:
    """A minute of 8 outlets fits in under 300 bytes."""
    full = GOOD._replace(
        frames=(
            GOOD.frames[0]._replace(
                outlets=tuple(
                    OutletReading(
                        outlet=n,
                        energy_wh=12345.678,
                        voltage_v=201.3,
                        current_a=15.9,
                        breaker_on=True,
                    )
                    for n in range(1, 9)
                )
            ),
        )
    )
    assert len(encode(full)) < 300


DC = OutletReading(
    outlet=1,
    energy_wh=123_456.0,
    voltage_v=800.0,
    current_a=180.0,
    breaker_on=True,
    power_w=144_000.0,
    soc_percent=62.5,
)


def test_a_dc_reading_travels_as_wire_version_2() -> None:
    """A 150 kW charger's reading (over 100 A and 500 V, with power and state of charge)
    needs version 2, and comes back whole."""
    batch = GOOD._replace(frames=(GOOD.frames[0]._replace(outlets=(DC,)),))
    payload = encode(batch)
    assert msgpack.unpackb(payload)[0] == 2
    assert decode(TopicKind.METER, payload) == batch


def test_ac_messages_still_travel_as_wire_version_1() -> None:
    """An AC reading fits version 1, so it is written in version 1's five fields: a cloud
    that knows only version 1 reads a new edge, and a new cloud reads an old edge."""
    payload = encode(GOOD)
    raw = msgpack.unpackb(payload)
    assert raw[0] == 1 and len(raw[3][0][2][0]) == 5
    assert decode(TopicKind.METER, payload) == GOOD
    old_edge = msgpack.packb([1, "ctl-1", 7, [[1_767_225_600, 10.0, [[1, 5.0, 200.0, 3.0, True]]]]])
    assert decode(TopicKind.METER, old_edge) == GOOD


def test_version_2_carries_what_version_1_refuses() -> None:
    wide = tampered((3, 0, 2, 0, 3), 150.0)
    with pytest.raises(CodecError, match="at most 100 A in wire version 1"):
        decode(TopicKind.METER, wide)
    raw = msgpack.unpackb(wide)
    raw[0] = 2
    assert decode(TopicKind.METER, msgpack.packb(raw)).frames[0].outlets[0].current_a == 150.0


def test_a_dc_edge_event_is_version_2_and_version_1_holds_its_limits() -> None:
    event = EdgeEvent(
        controller_id="dc-1",
        at=1.8e9,
        kind=EdgeEventKind.CURRENT_CROSSED,
        outlet=1,
        generation=3,
        current_a=180.0,
        breaker_on=True,
        detail="rose through 10 A",
        energy_wh=1.0,
        voltage_v=800.0,
    )
    payload = encode(event)
    assert msgpack.unpackb(payload)[0] == 2 and decode(TopicKind.EVENT, payload) == event
    raw = msgpack.unpackb(payload)
    raw[0] = 1
    with pytest.raises(CodecError, match="current_a: at most 100 A in wire version 1"):
        decode(TopicKind.EVENT, msgpack.packb(raw))

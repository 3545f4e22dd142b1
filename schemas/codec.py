"""msgpack codec: ``encode(message) -> bytes`` and ``decode(kind, bytes) -> message``.

Wire form: a msgpack array ``[version, field, field, …]`` in the field order of the
message's NamedTuple (schemas/messages.py); nested tuples are nested arrays. ``encode``
writes version 1 whenever the message fits it (no reading with power or state of charge,
nothing beyond 100 A or 500 V; a reading's two version 2 fields are then left off) and
version 2 otherwise; ``decode`` reads both, and holds version 1 to version 1's limits.

Decoding is the trust boundary for everything a device sends. It enforces, in order:

1. payload size (``MAX_PAYLOAD_BYTES``) before anything is parsed;
2. msgpack's own limits on declared lengths (strings, arrays, maps, binaries), so a
   header that claims 4 GiB allocates nothing;
3. the wire version;
4. the message's shape and every field's range, through pydantic in strict mode
   (no NaN/inf, no "12" for 12, outlets 1..8, …);
5. cross-field rules pydantic cannot express (no duplicate outlets or minutes).

A refused message nested deeper than any message can be (``MAX_DEPTH``, counted without
recursion) is reported as such.

Every failure is one ``CodecError`` whose ``reason`` says exactly what was wrong, with the
path of the offending field (``frames[0].outlets[2].current_a``). Nothing else escapes:
an unexpected exception inside decoding (a bug of ours or of a library) is turned into a
``CodecError`` too, so a caller that handles ``CodecError`` handles every input. Values
quoted in a reason are cut short (``reprlib``), whatever their size or depth.
"""

from __future__ import annotations

import reprlib
import types
import typing
from functools import cache
from typing import Any, Final, NamedTuple, TypeVar

import msgpack
from pydantic import ConfigDict, TypeAdapter, ValidationError

from schemas.errors import InputError
from schemas.messages import (
    V1_MAX_AMPS,
    V1_MAX_VOLTS,
    Budget,
    CommandAck,
    CommandOutcome,
    DesiredState,
    EdgeEvent,
    EdgeEventKind,
    LoadReport,
    Message,
    MeterAck,
    MeterBatch,
    OutletReading,
    Presence,
    ReportedState,
    StatusRequest,
)
from schemas.topics import TopicKind

#: The newest wire version, and every version this side decodes.
WIRE_VERSION: Final = 2
WIRE_VERSIONS: Final = (1, 2)
MAX_PAYLOAD_BYTES: Final = 256 * 1024
MAX_ARRAY_LEN: Final = 1024
MAX_STR_LEN: Final = 256
#: The deepest message is a MeterBatch: [version, …, frames[ frame[ …, outlets[ reading ]]]].
MAX_DEPTH: Final = 8

MESSAGE_TYPES: Final[dict[TopicKind, type[Any]]] = {
    TopicKind.METER: MeterBatch,
    TopicKind.METER_ACK: MeterAck,
    TopicKind.EVENT: EdgeEvent,
    TopicKind.DESIRED: DesiredState,
    TopicKind.ACK: CommandAck,
    TopicKind.STATE: ReportedState,
    TopicKind.PRESENCE: Presence,
    TopicKind.REQUEST: StatusRequest,
    TopicKind.BUDGET: Budget,
    TopicKind.LOAD: LoadReport,
}

#: What only version 2 says (load management): these travel as version 2 whatever they hold.
_V2_ONLY = (Budget, LoadReport)
_V2_EVENTS = frozenset({EdgeEventKind.PAUSED, EdgeEventKind.RESUMED})

M = TypeVar("M", bound=tuple[Any, ...])


class CodecError(InputError):
    """A payload that is not a valid chargeline message. ``reason`` is for humans and logs."""

    def __init__(self, reason: str, *, kind: str | None = None) -> None:
        self.reason = reason
        self.kind = kind
        super().__init__(f"{kind} payload: {reason}" if kind else reason, kind=kind)


def encode(message: Message) -> bytes:
    """Pack a message as ``[version, *fields]``: version 1 when it fits, else 2. Enums
    travel as their string value."""
    if isinstance(message, MeterBatch):
        if all(_fits_v1(r) for frame in message.frames for r in frame.outlets):
            frames = tuple(
                (f.minute, f.main_energy_wh, tuple(r[:5] for r in f.outlets))
                for f in message.frames
            )
            return msgpack.packb((1, message.controller_id, message.seq, frames), use_bin_type=True)
        return msgpack.packb((2, *message), use_bin_type=True)
    if isinstance(message, EdgeEvent) and (
        not (message.current_a <= V1_MAX_AMPS and message.voltage_v <= V1_MAX_VOLTS)
        or message.kind in _V2_EVENTS
    ):
        return msgpack.packb((2, *message), use_bin_type=True)
    if isinstance(message, _V2_ONLY) or (
        isinstance(message, CommandAck) and message.outcome is CommandOutcome.QUEUED
    ):
        return msgpack.packb((2, *message), use_bin_type=True)
    return msgpack.packb((1, *message), use_bin_type=True)


def _fits_v1(reading: OutletReading) -> bool:
    return (
        reading.power_w is None
        and reading.soc_percent is None
        and reading.current_a <= V1_MAX_AMPS
        and reading.voltage_v <= V1_MAX_VOLTS
    )


def decode(kind: TopicKind | type[M], payload: bytes) -> M:
    """Decode and validate one payload; raise ``CodecError`` for anything wrong with it."""
    cls: type[M] = MESSAGE_TYPES[kind] if isinstance(kind, TopicKind) else kind
    name = cls.__name__
    if not isinstance(payload, bytes | bytearray | memoryview):
        raise CodecError(f"expected bytes, got {type(payload).__name__}", kind=name)
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CodecError(
            f"{len(payload)} bytes exceeds the {MAX_PAYLOAD_BYTES} byte limit", kind=name
        )
    raw: Any = None
    try:
        raw = _unpack(payload, name)
        return _validate(cls, name, raw)
    except Exception as exc:  # the promise: nothing but CodecError leaves decode
        # Only a refused message pays for measuring its depth (half the cost of a decode):
        # the reason then says what is wrong with a deep one rather than where it broke.
        if _depth(raw) > MAX_DEPTH:
            raise CodecError(f"nested deeper than {MAX_DEPTH} levels", kind=name) from None
        if isinstance(exc, CodecError):
            raise
        detail = str(exc)[:80]
        raise CodecError(
            f"could not be decoded ({type(exc).__name__}: {detail})", kind=name
        ) from None


def _validate(cls: type[M], name: str, raw: Any) -> M:
    if not isinstance(raw, tuple) or not raw:
        raise CodecError(f"expected an array [version, …], got {type(raw).__name__}", kind=name)
    version, fields = raw[0], raw[1:]
    if version not in WIRE_VERSIONS or isinstance(version, bool):
        raise CodecError(
            f"unsupported wire version {_short(version)} (this side speaks"
            f" {', '.join(map(str, WIRE_VERSIONS))})",
            kind=name,
        )
    try:
        message: M = _adapter(cls).validate_python(fields)
    except ValidationError as exc:
        raise CodecError(_describe(cls, exc), kind=name) from None
    if isinstance(message, MeterBatch):
        _check_batch(message)
        if version == 1:
            _check_v1_batch(message, fields)
    elif isinstance(message, EdgeEvent) and version == 1:
        _check_v1_limits("", message.current_a, message.voltage_v, "EdgeEvent")
    return message


def _check_v1_batch(batch: MeterBatch, fields: tuple[Any, ...]) -> None:
    """Version 1 readings: five fields, within 100 A and 500 V."""
    for i, frame in enumerate(fields[2]):
        for j, reading in enumerate(frame[2]):
            where = f"frames[{i}].outlets[{j}]"
            if len(reading) != 5:
                raise CodecError(
                    f"{where}: wire version 1 readings have 5 fields, got {len(reading)}",
                    kind="MeterBatch",
                )
            parsed = batch.frames[i].outlets[j]
            _check_v1_limits(where + ".", parsed.current_a, parsed.voltage_v, "MeterBatch")


def _check_v1_limits(where: str, amps: float, volts: float, kind: str) -> None:
    if amps > V1_MAX_AMPS:
        raise CodecError(
            f"{where}current_a: at most {V1_MAX_AMPS:g} A in wire version 1 (got {amps:g})",
            kind=kind,
        )
    if volts > V1_MAX_VOLTS:
        raise CodecError(
            f"{where}voltage_v: at most {V1_MAX_VOLTS:g} V in wire version 1 (got {volts:g})",
            kind=kind,
        )


def _unpack(payload: bytes, name: str) -> Any:
    try:
        return msgpack.unpackb(
            payload,
            use_list=False,
            raw=False,
            strict_map_key=True,
            max_str_len=MAX_STR_LEN,
            max_bin_len=MAX_STR_LEN,
            max_array_len=MAX_ARRAY_LEN,
            max_map_len=16,
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise CodecError("trailing bytes after the message", kind=name) from None
    except (ValueError, TypeError, RecursionError, msgpack.UnpackException) as exc:
        # ValueError covers truncated input and declared lengths over the limits;
        # UnicodeDecodeError (a ValueError) covers invalid UTF-8 in strings.
        detail = str(exc) or type(exc).__name__
        raise CodecError(f"not valid msgpack within limits ({detail})", kind=name) from None


def _depth(value: Any) -> int:
    """How deeply arrays and maps nest in ``value`` (a scalar is 0), without recursion.

    Stops counting once past ``MAX_DEPTH``: the answer is then only "too deep"."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            item = (*item.keys(), *item.values())
        if isinstance(item, tuple | list):
            level += 1
            deepest = max(deepest, level)
            if deepest > MAX_DEPTH:
                return deepest
            stack.extend((child, level) for child in item)
    return deepest


_repr = reprlib.Repr()
_repr.maxlevel = 2
_repr.maxstring = _repr.maxother = _repr.maxlong = 40


def _short(value: Any) -> str:
    """A bounded ``repr`` of anything a device sent: never long, never deep."""
    text = _repr.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@cache
def _adapter(cls: type[Any]) -> TypeAdapter[Any]:
    return TypeAdapter(cls, config=ConfigDict(strict=True))


def _describe(cls: type[Any], exc: ValidationError) -> str:
    """Turn pydantic's positional error locations into field paths."""
    error = exc.errors(include_url=False)[0]
    path = _field_path(cls, error["loc"])
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    value = _short(error.get("input"))
    where = path or "message"
    return f"{where}: {error['msg']} (got {value}){more}"


def _field_path(cls: Any, loc: tuple[int | str, ...]) -> str:
    path = ""
    current: Any = cls
    for part in loc:
        current = _strip(current)
        if isinstance(part, int) and _is_namedtuple(current):
            names = current._fields
            if part >= len(names):
                return f"{path}[{part}]" if path else f"field {part}"
            name = names[part]
            path = f"{path}.{name}" if path else name
            current = typing.get_type_hints(current)[name]
        elif isinstance(part, int):
            path += f"[{part}]"
            args = typing.get_args(current)
            current = args[0] if args else Any
        elif part in _field_names(current):
            path = f"{path}.{part}" if path else str(part)
            current = typing.get_type_hints(current)[part]
        # other parts are pydantic's union/branch labels: not part of the data path
    return path


def _strip(tp: Any) -> Any:
    """Unwrap Annotated[...] and Optional[...] to the type that has fields or items."""
    while True:
        origin = typing.get_origin(tp)
        if origin is typing.Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            non_none = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = non_none[0] if len(non_none) == 1 else tp
            if len(non_none) != 1:
                return tp
        else:
            return tp


def _is_namedtuple(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, tuple) and hasattr(tp, "_fields")


def _field_names(tp: Any) -> tuple[str, ...]:
    return tp._fields if _is_namedtuple(tp) else ()


def _check_batch(batch: MeterBatch) -> None:
    minutes: set[int] = set()
    for index, frame in enumerate(batch.frames):
        if frame.minute in minutes:
            raise CodecError(
                f"frames[{index}].minute: minute {frame.minute} appears twice", kind="MeterBatch"
            )
        minutes.add(frame.minute)
        numbers = [reading.outlet for reading in frame.outlets]
        if len(set(numbers)) != len(numbers):
            raise CodecError(
                f"frames[{index}].outlets: outlet numbers repeat: {numbers}", kind="MeterBatch"
            )


__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MESSAGE_TYPES",
    "WIRE_VERSION",
    "WIRE_VERSIONS",
    "CodecError",
    "NamedTuple",
    "decode",
    "encode",
]

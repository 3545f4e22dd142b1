"""Reading a registry file (TOML or YAML) into validated models, with line-precise errors.

A registry file lists sites, controllers and outlets::

    [[sites]]
    id = "harbor-view"
    name = "Harbor View Apartments"
    contract_current_a = 200
    tariff_per_kwh = 31.5              # the price from the beginning
    latitude = 35.6329                 # WGS 84 degrees; both or neither
    longitude = 139.8804
    address = "1-2-3 Harumi, Chuo-ku, Tokyo"
    opening_hours = "Mo-Fr 07:00-22:00; Sa,Su 09:00-18:00"   # or "24/7" (the default)
    access_notes = "Level B1, bays 40-47; ask the concierge for the gate code"

    [[sites.tariffs]]                  # a price change, in force from valid_from
    valid_from = 2027-04-01T00:00:00+09:00
    per_kwh = 33.0

    [[controllers]]
    id = "hv-ctl-01"
    site = "harbor-view"

    [[controllers.outlets]]
    number = 1
    outlet_id = "HV-0101"
    rated_current_a = 16
    rise_threshold_a = 2.0

    [[stations]]                       # an OCPP charging station (docs/ocpp.md)
    id = "HV-DC-01"                    # its OCPP id: the last part of its endpoint URL
    controller_id = "hv-dc-01"         # how the rest of chargeline knows it
    site = "harbor-view"
    ocpp_version = "2.0.1"             # or "1.6" (OCPP 1.6J)

    [[stations.connectors]]
    number = 1                         # its outlet number (1..8) on the controller
    evse = 1                           # 2.0.1: the EVSE id; 1.6: ignored
    connector = 1                      # the connector id (1.6: connectorId)
    outlet_id = "HV-DC01"
    current_type = "DC"                # or "AC"
    rated_current_a = 200
    rated_power_kw = 150
    rise_threshold_a = 2.0

    [[rfid_tags]]                      # a card a resident starts a charge with
    id_tag = "04A2B3C4D5E6F7"
    client_id = "…"                    # the partner client its charges are billed to

Pure: ``parse(text, suffix)`` returns a ``Registry`` or raises ``RegistryFileError`` whose
lines name the file line of each problem.
"""

from __future__ import annotations

import re
import tomllib
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from schemas.errors import InputError
from schemas.messages import OUTLET_ID_PATTERN
from schemas.topics import CONTROLLER_ID_RE, MAX_OUTLETS

Name = Annotated[str, Field(min_length=1, max_length=200)]
PublicId = Annotated[str, Field(pattern=OUTLET_ID_PATTERN)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OutletEntry(_Strict):
    number: Annotated[int, Field(ge=1, le=MAX_OUTLETS)]
    outlet_id: PublicId
    rated_current_a: Annotated[float, Field(gt=0, le=80)] = 16.0
    rise_threshold_a: Annotated[float, Field(gt=0, le=80)] = 2.0
    #: Out of service: listed, never available, and no charge starts on it.
    in_service: bool = True

    @model_validator(mode="after")
    def _threshold_below_rating(self) -> OutletEntry:
        if self.rise_threshold_a >= self.rated_current_a:
            raise ValueError("rise_threshold_a must be below rated_current_a")
        return self


#: An OCPP station id: OCPP 1.6's CiString48 / 2.0.1's identifierString, as URL-safe text.
STATION_ID = r"^[A-Za-z0-9._:*+|@-]{1,48}$"
#: An RFID id tag (OCPP's idToken): printable, at most 36 characters.
ID_TAG = r"^[^\x00-\x1f\x7f]{1,36}$"


class ConnectorEntry(_Strict):
    """One connector of an OCPP station: an outlet of the station's controller."""

    number: Annotated[int, Field(ge=1, le=MAX_OUTLETS)]
    evse: Annotated[int, Field(ge=1, le=MAX_OUTLETS)] = 1
    connector: Annotated[int, Field(ge=1, le=MAX_OUTLETS)] = 1
    outlet_id: PublicId
    current_type: Literal["AC", "DC"] = "AC"
    #: A DC fast charger draws up to 500 A (the wire contract's version 2 limit).
    rated_current_a: Annotated[float, Field(gt=0, le=500)] = 32.0
    rated_power_kw: Annotated[float, Field(gt=0, le=1000)] | None = None
    rise_threshold_a: Annotated[float, Field(gt=0, le=500)] = 2.0
    in_service: bool = True

    @model_validator(mode="after")
    def _threshold_below_rating(self) -> ConnectorEntry:
        if self.rise_threshold_a >= self.rated_current_a:
            raise ValueError("rise_threshold_a must be below rated_current_a")
        return self


class StationEntry(_Strict):
    """An OCPP charging station: one more controller to the rest of chargeline."""

    id: Annotated[str, Field(pattern=STATION_ID)]
    #: Required unless ``id`` is itself a controller id: never lower-cased into a collision.
    controller_id: Annotated[str, Field(pattern=f"^{CONTROLLER_ID_RE.pattern}$")] | None = None
    site: PublicId
    ocpp_version: Literal["1.6", "2.0.1"]
    safe_share_a: Annotated[float, Field(ge=0, le=10_000)] | None = None
    connectors: Annotated[list[ConnectorEntry], Field(min_length=1, max_length=MAX_OUTLETS)]

    @model_validator(mode="after")
    def _controller_id(self) -> StationEntry:
        if self.controller_id is None:
            if not CONTROLLER_ID_RE.fullmatch(self.id):
                raise ValueError(
                    f"station id {self.id!r} is not a controller id ([a-z0-9][a-z0-9-]{{0,62}}):"
                    " give the station a controller_id"
                )
            object.__setattr__(self, "controller_id", self.id)
        numbers = [c.number for c in self.connectors]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"connector numbers repeat: {sorted(numbers)}")
        plugs = [
            (c.evse, c.connector) if self.ocpp_version == "2.0.1" else (c.connector,)
            for c in self.connectors
        ]
        if len(set(plugs)) != len(plugs):
            raise ValueError(f"connectors repeat: {sorted(plugs)}")
        return self

    @property
    def cid(self) -> str:
        assert self.controller_id is not None  # set by the validator
        return self.controller_id


class RfidTagEntry(_Strict):
    id_tag: Annotated[str, Field(pattern=ID_TAG)]
    client_id: Annotated[str, Field(min_length=1, max_length=200)]
    valid: bool = True


class ControllerEntry(_Strict):
    id: Annotated[str, Field(pattern=f"^{CONTROLLER_ID_RE.pattern}$")]
    site: PublicId
    has_main_meter: bool = True
    #: What it may draw when the site's allocator is unreachable (default: an equal part of
    #: what the cap leaves over the building's peak).
    safe_share_a: Annotated[float, Field(ge=0, le=10_000)] | None = None
    outlets: Annotated[list[OutletEntry], Field(max_length=MAX_OUTLETS)] = []

    @field_validator("outlets")
    @classmethod
    def _unique_numbers(cls, outlets: list[OutletEntry]) -> list[OutletEntry]:
        numbers = [o.number for o in outlets]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"outlet numbers repeat: {sorted(numbers)}")
        return outlets


Price = Annotated[float, Field(ge=0, le=10_000)]


class TariffEntry(_Strict):
    """A price per kWh in force from ``valid_from`` until the site's next tariff."""

    valid_from: AwareDatetime
    per_kwh: Price


#: A subset of OpenStreetMap's ``opening_hours``: "24/7", or rules such as
#: "Mo-Fr 07:00-22:00; Sa,Su 09:00-12:00,13:00-18:00; PH off".
_DAY = r"(?:Mo|Tu|We|Th|Fr|Sa|Su|PH)"
_DAYS = rf"{_DAY}(?:-{_DAY})?(?:,{_DAY}(?:-{_DAY})?)*"
_SPAN = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]-(?:[01][0-9]|2[0-4]):[0-5][0-9]"
_RULE = rf"{_DAYS} (?:off|{_SPAN}(?:,{_SPAN})*)"
OPENING_HOURS = re.compile(rf"^(?:24/7|{_RULE}(?:; {_RULE})*)$")


class SiteEntry(_Strict):
    id: PublicId
    name: Name
    location: str = ""
    timezone: str = "UTC"
    contract_current_a: Annotated[float, Field(gt=0, le=10_000)]
    #: Load management: the cap is the contract less this margin (default 10 % of it)…
    cap_margin_a: Annotated[float, Field(ge=0, le=10_000)] | None = None
    #: …and the building's own peak sizes each controller's static safe share.
    building_peak_a: Annotated[float, Field(ge=0, le=10_000)] = 0.0
    tariff_per_kwh: Price
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "JPY"
    latitude: Annotated[float, Field(ge=-90, le=90)] | None = None
    longitude: Annotated[float, Field(ge=-180, le=180)] | None = None
    address: Annotated[str, Field(max_length=500)] = ""
    opening_hours: Annotated[str, Field(max_length=500)] = "24/7"
    access_notes: Annotated[str, Field(max_length=2000)] = ""
    tariffs: list[TariffEntry] = []

    @field_validator("opening_hours")
    @classmethod
    def _opening_hours(cls, value: str) -> str:
        if not OPENING_HOURS.match(value):
            raise ValueError(
                f"opening_hours {value!r} is not '24/7' or rules like"
                " 'Mo-Fr 07:00-22:00; Sa,Su 09:00-18:00; PH off'"
            )
        return value

    @field_validator("tariffs")
    @classmethod
    def _one_tariff_per_instant(cls, tariffs: list[TariffEntry]) -> list[TariffEntry]:
        _no_repeats("tariff valid_from", [str(t.valid_from.timestamp()) for t in tariffs])
        return tariffs

    @model_validator(mode="after")
    def _both_coordinates(self) -> SiteEntry:
        if (self.latitude is None) != (self.longitude is None):
            raise ValueError("give both latitude and longitude, or neither")
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value


class Registry(_Strict):
    sites: list[SiteEntry] = []
    controllers: list[ControllerEntry] = []
    stations: list[StationEntry] = []
    rfid_tags: list[RfidTagEntry] = []

    @model_validator(mode="after")
    def _references(self) -> Registry:
        site_ids = [s.id for s in self.sites]
        _no_repeats("site id", site_ids)
        _no_repeats(
            "controller id", [c.id for c in self.controllers] + [s.cid for s in self.stations]
        )
        _no_repeats("station id", [s.id for s in self.stations])
        _no_repeats(
            "outlet_id",
            [o.outlet_id for c in self.controllers for o in c.outlets]
            + [c.outlet_id for s in self.stations for c in s.connectors],
        )
        _no_repeats("id_tag", [t.id_tag for t in self.rfid_tags])
        return self


def _no_repeats(what: str, values: list[str]) -> None:
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise ValueError(f"{what} {value!r} appears twice")
        seen.add(value)


class RegistryFileError(InputError):
    """Problems in a registry file; ``problems`` holds ``(line or None, message)``."""

    exit_code = 1

    def __init__(self, source: str, problems: list[tuple[int | None, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [
            f"{source}:{line}: {msg}" if line else f"{source}: {msg}" for line, msg in problems
        ]
        super().__init__("\n".join(lines), source=source)


def parse(text: str, *, source: str = "registry", suffix: str = ".toml") -> Registry:
    if suffix in (".yaml", ".yml"):
        data, locate = _load_yaml(text, source)
    elif suffix == ".toml":
        data, locate = _load_toml(text, source)
    else:
        raise RegistryFileError(
            source, [(None, f"unknown file type {suffix!r}: use .toml or .yaml")]
        )
    try:
        registry = Registry.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            where = ".".join(str(p) for p in loc) or "file"
            problems.append((locate(loc), f"{where}: {error['msg']}"))
        raise RegistryFileError(source, problems) from None
    _check_sites_exist(registry, source, locate)
    return registry


def _check_sites_exist(registry: Registry, source: str, locate: Any) -> None:
    known = {s.id for s in registry.sites}
    problems = [
        (
            locate(("controllers", i, "site")),
            f"controllers.{i}.site: no site {c.site!r} in this file",
        )
        for i, c in enumerate(registry.controllers)
        if c.site not in known
    ] + [
        (
            locate(("stations", i, "site")),
            f"stations.{i}.site: no site {s.site!r} in this file",
        )
        for i, s in enumerate(registry.stations)
        if s.site not in known
    ]
    if problems:
        raise RegistryFileError(source, problems)


# --- locating errors ----------------------------------------------------------------------


def _load_yaml(text: str, source: str) -> tuple[Any, Any]:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise RegistryFileError(
            source, [(line, f"not valid YAML: {getattr(exc, 'problem', exc)}")]
        ) from None

    def locate(loc: tuple[Any, ...]) -> int | None:
        current, line = node, (node.start_mark.line + 1 if node is not None else None)
        for part in loc:
            if isinstance(current, yaml.MappingNode):
                match = next((v for k, v in current.value if k.value == part), None)
                key = next((k for k, v in current.value if k.value == part), None)
                if match is None:
                    return line
                line = (key.start_mark.line + 1) if key is not None else line
                current = match
            elif isinstance(current, yaml.SequenceNode) and isinstance(part, int):
                if part >= len(current.value):
                    return line
                current = current.value[part]
                line = current.start_mark.line + 1
            else:
                return line
        return line

    return data if data is not None else {}, locate


_TABLE_HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_.]+)\s*\]\]")
_KEY = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=")


def _load_toml(text: str, source: str) -> tuple[Any, Any]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = re.search(r"line (\d+)", str(exc))
        line = int(match[1]) if match else None
        raise RegistryFileError(source, [(line, f"not valid TOML: {exc}")]) from None

    # Walk the file once, remembering the line of every [[array.of.tables]] entry and key.
    # That covers the registry's documented layout; anything else falls back to the nearest
    # enclosing entry.
    lines: dict[tuple[Any, ...], int] = {}
    counters: dict[tuple[Any, ...], int] = {}
    current: tuple[Any, ...] = ()
    for number, raw in enumerate(text.splitlines(), start=1):
        header = _TABLE_HEADER.match(raw)
        if header:
            names = header[1].split(".")
            parent: tuple[Any, ...] = ()
            for name in names[:-1]:
                parent = (*parent, name, counters.get((*parent, name), 1) - 1)
            key = (*parent, names[-1])
            index = counters.get(key, 0)
            counters[key] = index + 1
            current = (*key, index)
            lines[current] = number
            continue
        key_match = _KEY.match(raw)
        if key_match:
            lines.setdefault((*current, key_match[1]), number)

    def locate(loc: tuple[Any, ...]) -> int | None:
        for end in range(len(loc), 0, -1):
            if loc[:end] in lines:
                return lines[loc[:end]]
        return None

    return data, locate

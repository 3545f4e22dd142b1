"""The registry's places, service and tariffs: what the partner app's screens read
(issue 17). Parsed with line-precise errors; imported idempotently; the tariff history is
the file's, and a charge keeps the price it started under."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from store.registry import import_registry
from store.registry_file import RegistryFileError, parse
from tests.db import query

pytestmark = pytest.mark.database

PLACE = """\
[[sites]]
id = "harbor-view"
name = "Harbor View"
timezone = "Asia/Tokyo"
contract_current_a = 200
tariff_per_kwh = 31.5
latitude = 35.6329
longitude = 139.8804
address = "1-2-3 Harumi, Chuo-ku, Tokyo"
opening_hours = "Mo-Fr 07:00-22:00; Sa,Su 09:00-12:00,13:00-18:00; PH off"
access_notes = "Level B1, bays 40-47"

[[sites.tariffs]]
valid_from = 2027-04-01T00:00:00+09:00
per_kwh = 33.0

[[controllers]]
id = "hv-ctl-01"
site = "harbor-view"

[[controllers.outlets]]
number = 1
outlet_id = "HV-0101"

[[controllers.outlets]]
number = 2
outlet_id = "HV-0102"
in_service = false
"""


def test_a_place_parses_with_its_tariff_history() -> None:
    site = parse(PLACE).sites[0]
    assert (site.latitude, site.longitude) == (35.6329, 139.8804)
    assert site.opening_hours.startswith("Mo-Fr 07:00-22:00")
    assert [(t.valid_from.isoformat(), t.per_kwh) for t in site.tariffs] == [
        ("2027-04-01T00:00:00+09:00", 33.0)
    ]
    assert [o.in_service for o in parse(PLACE).controllers[0].outlets] == [True, False]


@pytest.mark.parametrize(
    ("replace", "by", "line", "message"),
    [
        ("latitude = 35.6329", "latitude = 95", 7, "sites.0.latitude: Input should be less"),
        ("longitude = 139.8804\n", "", 1, "give both latitude and longitude, or neither"),
        (
            '"Mo-Fr 07:00-22:00; Sa,Su',
            '"Mon-Fri 7am-10pm; Sa,Su',
            10,
            "opening_hours 'Mon-Fri 7am-10pm;",
        ),
        ("per_kwh = 33.0", "per_kwh = -2", 15, "sites.0.tariffs.0.per_kwh"),
        (
            "valid_from = 2027-04-01T00:00:00+09:00",
            "valid_from = 2027-04-01T00:00:00",
            14,
            "sites.0.tariffs.0.valid_from: Input should have timezone info",
        ),
        ("in_service = false", 'in_service = "maybe"', 28, "in_service: Input should be"),
    ],
)
def test_place_mistakes_name_the_line(replace: str, by: str, line: int, message: str) -> None:
    assert replace in PLACE
    with pytest.raises(RegistryFileError) as caught:
        parse(PLACE.replace(replace, by, 1), source="site.toml")
    text = str(caught.value)
    assert message in text
    assert text.startswith(f"site.toml:{line}:"), text


def test_the_documented_example_registry_has_a_place_and_a_price_history() -> None:
    example = Path(__file__).parent.parent / "deploy" / "registry.example.toml"
    site = parse(example.read_text(), source=str(example)).sites[0]
    assert site.latitude is not None and site.address and site.tariffs


def test_a_repeated_tariff_instant_is_refused() -> None:
    twice = PLACE.replace(
        "[[controllers]]",
        "[[sites.tariffs]]\nvalid_from = 2027-03-31T15:00:00Z\nper_kwh = 34.0\n\n[[controllers]]",
        1,
    )
    with pytest.raises(RegistryFileError, match=r"tariff valid_from .* appears twice"):
        parse(twice)


def test_import_keeps_places_service_and_tariffs_idempotently(database: str) -> None:
    first = import_registry(database, parse(PLACE))
    assert first.counts["tariffs added"] == 2
    again = import_registry(database, parse(PLACE))
    assert str(again) == (
        "1 controllers unchanged, 2 outlets unchanged, 1 sites unchanged, 2 tariffs unchanged"
    )
    assert query(database, "SELECT latitude, longitude, address, access_notes FROM sites") == [
        (35.6329, 139.8804, "1-2-3 Harumi, Chuo-ku, Tokyo", "Level B1, bays 40-47")
    ]
    assert query(database, "SELECT outlet_id, in_service FROM outlets ORDER BY 1") == [
        ("HV-0101", True),
        ("HV-0102", False),
    ]
    tariffs = query(database, "SELECT valid_from, per_kwh FROM site_tariffs ORDER BY valid_from")
    assert [float(p) for _, p in tariffs] == [31.5, 33.0]
    assert tariffs[1][0] == dt.datetime(2027, 3, 31, 15, tzinfo=dt.UTC)

    back_in_service = PLACE.replace("in_service = false", "in_service = true")
    one_tariff = back_in_service.replace("[[sites.tariffs]]", "[[sites.x]]").replace(
        "[[sites.x]]\nvalid_from = 2027-04-01T00:00:00+09:00\nper_kwh = 33.0\n", ""
    )
    changed = import_registry(database, parse(one_tariff))
    assert (changed.counts["outlets updated"], changed.counts["tariffs removed"]) == (1, 1)
    assert query(database, "SELECT count(*) FROM site_tariffs") == [(1,)]

"""Registry files: line-precise errors, and idempotent import into the database."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from schemas.errors import InputError
from store.registry import import_registry
from store.registry_file import RegistryFileError, parse
from tests.db import query

pytestmark = pytest.mark.processes

GOOD = """\
[[sites]]
id = "harbor-view"
name = "Harbor View"
timezone = "Asia/Tokyo"
contract_current_a = 200
tariff_per_kwh = 31.5

[[controllers]]
id = "hv-ctl-01"
site = "harbor-view"

[[controllers.outlets]]
number = 1
outlet_id = "HV-0101"

[[controllers.outlets]]
number = 2
outlet_id = "HV-0102"
rated_current_a = 32
rise_threshold_a = 3
"""


def test_good_toml_parses() -> None:
    """A documented registry file parses with defaults filled in."""
    registry = parse(GOOD)
    assert [o.outlet_id for o in registry.controllers[0].outlets] == ["HV-0101", "HV-0102"]
    assert registry.controllers[0].outlets[0].rated_current_a == 16.0


@pytest.mark.parametrize(
    ("replace", "by", "line", "message"),
    [
        (
            "number = 2",
            "number = 9",
            17,
            "controllers.0.outlets.1.number: Input should be less than or equal to 8",
        ),
        ('id = "hv-ctl-01"', 'id = "HV CTL"', 9, "controllers.0.id: String should match pattern"),
        ('site = "harbor-view"', 'site = "elsewhere"', 10, "no site 'elsewhere' in this file"),
        ("tariff_per_kwh = 31.5", "tariff_per_kwh = -1", 6, "sites.0.tariff_per_kwh"),
        ('timezone = "Asia/Tokyo"', 'timezone = "Mars/Base"', 4, "unknown time zone"),
        (
            'outlet_id = "HV-0102"',
            'outlet_id = "HV-0101"',
            None,
            "outlet_id 'HV-0101' appears twice",
        ),
        (
            "rise_threshold_a = 3",
            "rise_threshold_a = 40",
            16,
            "rise_threshold_a must be below rated_current_a",
        ),
        (
            "number = 1\n",
            "number = 1\ncolour = 'red'\n",
            14,
            "colour: Extra inputs are not permitted",
        ),
        ("[[controllers]]", "[[controllers]", 8, "not valid TOML"),
    ],
)
def test_toml_errors_name_the_line(replace: str, by: str, line: int | None, message: str) -> None:
    """Each mistake is reported with its file line and what is wrong."""
    with pytest.raises(RegistryFileError) as caught:
        parse(GOOD.replace(replace, by, 1), source="site.toml")
    text = str(caught.value)
    assert message in text
    if line is not None:
        assert text.startswith(f"site.toml:{line}:"), text


def test_yaml_errors_name_the_line() -> None:
    """YAML registries get line numbers too."""
    yaml_text = "sites:\n  - id: s\n    name: S\n    contract_current_a: 0\n    tariff_per_kwh: 1\n"
    with pytest.raises(RegistryFileError) as caught:
        parse(yaml_text, source="r.yaml", suffix=".yaml")
    assert str(caught.value).startswith("r.yaml:4: sites.0.contract_current_a")


def test_import_is_idempotent(database: str) -> None:
    """Importing twice adds once, then changes nothing; an edit updates in place."""
    first = import_registry(database, parse(GOOD))
    assert str(first) == "1 controllers added, 2 outlets added, 1 sites added, 1 tariffs added"
    assert str(import_registry(database, parse(GOOD))) == (
        "1 controllers unchanged, 2 outlets unchanged, 1 sites unchanged, 1 tariffs unchanged"
    )
    changed = import_registry(
        database, parse(GOOD.replace("tariff_per_kwh = 31.5", "tariff_per_kwh = 33"))
    )
    assert changed.counts["sites updated"] == 1
    assert query(database, "SELECT tariff_per_kwh FROM sites") == [(33,)]
    assert query(database, "SELECT count(*) FROM outlets") == [(2,)]


def test_cli_import_reports_errors_and_exits_nonzero(tmp_path: Path, database: str) -> None:
    """`chargeline registry import` prints line-precise errors and exits 1 for a bad file."""
    bad = tmp_path / "site.toml"
    bad.write_text(GOOD.replace("number = 2", "number = 0"))
    env = {"CHARGELINE_DATABASE_URL": database, "PATH": "/usr/bin:/bin"}

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chargeline", "registry", "import", str(bad)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    result = run()
    assert result.returncode == 1
    assert f"{bad}:17: controllers.0.outlets.1.number" in result.stderr
    bad.write_text(GOOD)
    result = run()
    assert result.returncode == 0, result.stderr
    assert "2 outlets added" in result.stdout


def test_stations_import_idempotently_as_controllers_with_connectors(database: str) -> None:
    """The documented example's station: once added (a controller without a main meter,
    its connector an outlet of kind ocpp_dc), then unchanged; and its controller id is
    never taken over by another station."""
    example = Path(__file__).parent.parent / "deploy" / "registry.example.toml"
    registry = parse(example.read_text(), source=str(example))
    first = import_registry(database, registry)
    assert first.counts["stations added"] == 1 and first.counts["connectors added"] == 1
    again = import_registry(database, registry)
    assert not any(key.endswith(("added", "updated")) for key in again.counts), again
    assert query(
        database,
        "SELECT s.station_id, s.ocpp_version, c.has_main_meter, o.kind, n.evse_id"
        " FROM ocpp_stations s JOIN controllers c USING (controller_id)"
        " JOIN outlets o USING (controller_id) JOIN ocpp_connectors n USING (controller_id)",
    ) == [("HV-DC-01", "2.0.1", False, "ocpp_dc", 1)]
    other = registry.stations[0].model_copy(update={"id": "OTHER-01"})
    with pytest.raises(
        InputError, match="controller id 'hv-dc-01' already belongs to station 'HV-DC-01'"
    ):
        import_registry(database, registry.model_copy(update={"stations": [other]}))

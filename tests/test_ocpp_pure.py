"""The OCPP bridge's pure parts: meter values as readings, minute frames from a station's
samples, 1.6 transaction ids, the registry's stations, and the broker's grants to the
bridge."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.policy import Access, Policy, Role
from ocpp_bridge import readings
from ocpp_bridge.minutes import IDLE_S, SETTLE_S, MinuteFramer
from ocpp_bridge.station import transaction_id_16
from schemas.messages import OutletReading
from schemas.topics import Topics
from store.registry_file import RegistryFileError, parse

pytestmark = pytest.mark.pure

T0 = 1_800_000_000  # a minute boundary (divisible by 60)


def test_a_16_meter_value_reads_with_its_units_and_phases() -> None:
    (sample,) = readings.samples(
        [
            {
                "timestamp": "2027-01-15T08:00:00Z",
                "sampled_value": [
                    {"value": "12.5", "measurand": "Energy.Active.Import.Register", "unit": "kWh"},
                    {"value": "15.9", "measurand": "Current.Import", "phase": "L1", "unit": "A"},
                    {"value": "16.2", "measurand": "Current.Import", "phase": "L2", "unit": "A"},
                    {"value": "229", "measurand": "Voltage", "phase": "L1-N", "unit": "V"},
                    {"value": "231", "measurand": "Voltage", "phase": "L2-N", "unit": "V"},
                    {"value": "400", "measurand": "Voltage", "phase": "L1-L2", "unit": "V"},
                    {"value": "3.7", "measurand": "Power.Active.Import", "unit": "kW"},
                    {"value": "9", "measurand": "Temperature", "unit": "Celsius"},
                ],
            }
        ]
    )
    assert sample.at == readings.timestamp("2027-01-15T08:00:00+00:00")
    assert sample.energy_wh == 12_500.0
    assert sample.current_a == 16.2  # the highest phase: what a breaker sees
    assert sample.voltage_v == 230.0  # phase to neutral, averaged; L1-L2 is not the outlet's
    assert sample.power_w == 3_700.0


def test_a_201_meter_value_uses_its_multiplier_and_the_default_measurand() -> None:
    (sample,) = readings.samples(
        [
            {
                "timestamp": "2027-01-15T08:00:00.250+09:00",
                "sampled_value": [
                    {"value": 42.5, "unit_of_measure": {"unit": "Wh", "multiplier": 3}},
                    {"value": 180, "measurand": "Current.Import"},
                    {"value": 61, "measurand": "SoC", "location": "EV"},
                    {"value": 5, "measurand": "Current.Import", "location": "Inlet"},
                ],
            }
        ]
    )
    assert sample.energy_wh == 42_500.0
    assert sample.current_a == 180.0  # the inlet's (grid side) value is not the car's
    assert sample.soc_percent == 61.0
    assert sample.at == readings.timestamp("2027-01-14T23:00:00.250Z")


def test_values_that_are_not_numbers_are_skipped_and_named() -> None:
    (sample,) = readings.samples(
        [
            {
                "timestamp": "2027-01-15T08:00:00Z",
                "sampled_value": [
                    {"value": "NaN", "measurand": "Current.Import"},
                    {"value": "12", "measurand": "Current.Import", "unit": "kWh"},
                    {"value": "100.0"},
                ],
            }
        ]
    )
    assert sample.current_a is None and sample.energy_wh == 100.0
    assert sample.skipped == ("Current.Import=NaN", "Current.Import=12")


def test_a_sample_without_a_usable_time_is_left_out() -> None:
    assert readings.samples([{"timestamp": "yesterday", "sampled_value": [{"value": "1"}]}]) == []
    assert readings.timestamp("2027-01-15T08:00:00") is None  # no zone: not an instant


def r(outlet: int, wh: float, amps: float = 0.0) -> OutletReading:
    return OutletReading(outlet, wh, 230.0, amps, amps > 0)


def test_a_minute_is_framed_once_the_station_has_moved_past_it() -> None:
    framer = MinuteFramer()
    assert framer.add(T0 + 1, r(1, 10)) == []
    assert framer.add(T0 + 2, r(2, 20)) == []
    assert framer.add(T0 + 30, r(1, 11)) == []  # the latest sample of a minute wins
    (frame,) = framer.add(T0 + 60 + SETTLE_S, r(1, 12))
    assert frame.minute == T0
    assert frame.outlets == (r(1, 11), r(2, 20))
    assert frame.main_energy_wh == 31


def test_queued_samples_land_in_their_own_minutes_in_order() -> None:
    """A station back from an outage sends its queue in time order: each minute is framed
    as the next one's samples arrive, never two minutes into one."""
    framer = MinuteFramer()
    frames = []
    for m in range(5):
        frames += framer.add(T0 + 60 * m + 10, r(1, 100 + m))
    assert [f.minute for f in frames] == [T0 + 60 * m for m in range(4)]
    assert [f.outlets[0].energy_wh for f in frames] == [100, 101, 102, 103]


def test_an_idle_minute_is_framed_by_the_bridges_clock_and_a_late_sample_refused() -> None:
    framer = MinuteFramer()
    framer.add(T0 + 5, r(1, 10))
    assert framer.idle(T0 + 60 + IDLE_S - 1) == []
    (frame,) = framer.idle(T0 + 60 + IDLE_S)
    assert frame.minute == T0
    assert framer.add(T0 + 30, r(2, 5)) == [] and framer.late == 1


@given(st.lists(st.tuples(st.integers(0, 600), st.integers(1, 3)), max_size=60))
def test_no_minute_is_ever_framed_twice(samples: list[tuple[int, int]]) -> None:
    framer = MinuteFramer()
    minutes: list[int] = []
    for offset, outlet in sorted(samples):
        minutes += [f.minute for f in framer.add(T0 + offset, r(outlet, offset))]
    minutes += [f.minute for f in framer.idle(T0 + 10_000)]
    assert len(minutes) == len(set(minutes)) and minutes == sorted(minutes)


def test_a_retried_start_transaction_gets_the_same_id_and_a_new_one_a_new_id() -> None:
    first = transaction_id_16("wb-1", 1, T0, 1000.0, "TAG1")
    assert transaction_id_16("wb-1", 1, T0, 1000.0, "TAG1") == first
    assert transaction_id_16("wb-1", 1, T0 + 60, 1000.0, "TAG1") != first
    assert 0 < first < 2**31  # 1.6's transactionId is an integer


STATION = """
[[sites]]
id = "s1"
name = "S"
contract_current_a = 100
tariff_per_kwh = 30

[[stations]]
id = "{sid}"
{cid_line}
site = "s1"
ocpp_version = "2.0.1"

[[stations.connectors]]
number = 1
outlet_id = "X-1"
current_type = "DC"
rated_current_a = 400
rise_threshold_a = 2.0
"""


def test_an_upper_case_station_id_needs_its_controller_id_written_out() -> None:
    with pytest.raises(RegistryFileError) as caught:
        parse(STATION.format(sid="HV-DC-01", cid_line=""))
    assert (
        "registry:8: stations.0: Value error, station id 'HV-DC-01' is not a controller id"
        in str(caught.value)
    )
    found = parse(STATION.format(sid="HV-DC-01", cid_line='controller_id = "hv-dc-01"'))
    assert found.stations[0].cid == "hv-dc-01"
    assert parse(STATION.format(sid="dc-1", cid_line="")).stations[0].cid == "dc-1"


def test_a_station_and_a_controller_cannot_share_a_controller_id() -> None:
    text = STATION.format(sid="HV-DC-01", cid_line='controller_id = "c1"')
    text += '\n[[controllers]]\nid = "c1"\nsite = "s1"\n'
    with pytest.raises(RegistryFileError, match="controller id 'c1' appears twice"):
        parse(text)


POLICY = Policy(Topics(), frozenset({"dc-1"}))


@pytest.mark.parametrize(
    ("access", "topic", "allowed"),
    [
        (Access.WRITE, "cl/v1/ctl/dc-1/meter", True),
        (Access.WRITE, "cl/v1/ctl/dc-1/presence", True),
        (Access.WRITE, "cl/v1/ctl/ctl-1/meter", False),  # a controller's: never
        (Access.WRITE, "cl/v1/ctl/dc-1/outlet/1/desired", False),  # commands are the gateway's
        (Access.READ, "cl/v1/ctl/dc-1/outlet/1/desired", True),
        (Access.READ, "cl/v1/ctl/dc-1/meter/ack", True),
        (Access.READ, "cl/v1/ctl/ctl-1/meter/ack", False),
    ],
)
def test_the_bridge_speaks_for_stations_only(access: Access, topic: str, allowed: bool) -> None:
    assert POLICY.allows(name="svc_ocpp", role=Role.OCPP, access=access, topic=topic) is allowed


def test_the_bridge_subscribes_with_wildcards_and_receives_stations_messages_only() -> None:
    """One set of wildcard filters serves thousands of stations; what it then receives is
    judged topic by topic (``Action.RECEIVE``), so a controller's commands never reach it."""
    for wide in ("cl/v1/ctl/+/outlet/+/desired", "cl/v1/ctl/+/meter/ack"):
        assert POLICY.allows(
            name="svc_ocpp", role=Role.OCPP, access=Access.READ, topic=wide, subscribing=True
        )
    assert not POLICY.allows(
        name="svc_ocpp", role=Role.OCPP, access=Access.READ, topic="cl/v1/ctl/#", subscribing=True
    )
    assert POLICY.allows(
        name="svc_ocpp", role=Role.OCPP, access=Access.READ, topic="cl/v1/ctl/dc-1/outlet/1/desired"
    )
    assert not POLICY.allows(
        name="svc_ocpp",
        role=Role.OCPP,
        access=Access.READ,
        topic="cl/v1/ctl/ctl-1/outlet/1/desired",
    )


def test_a_station_identity_has_no_grant_at_the_broker() -> None:
    for access in Access:
        assert not POLICY.allows(
            name="dc-1", role=Role.STATION, access=access, topic="cl/v1/ctl/dc-1/meter"
        )

"""OCPP stations end to end, nothing mocked: the ``ocpp`` package's charge point side (1.6J
and 2.0.1) against ``chargeline ocpp``, with the broker, ingest, the authorization server,
the gateway and the partner's webhook receiver all real. The partner uses the same API as
for an outlet controller and hears the same webhooks."""

from __future__ import annotations

import time

import pytest

from tests.db import query
from tests.partners import Partner
from tests.procs import wait_for
from tests.stations import Stations

pytestmark = pytest.mark.processes


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_the_partner_charges_on_a_station_as_on_an_outlet(
    partner: Partner, stations: Stations, version: str
) -> None:
    inst = stations.installation
    station = stations.start(stations.station(version))
    outlet = stations.outlets[version]
    cid = stations.cids[version]
    wait_for(
        lambda: (
            query(
                inst.database, "SELECT online FROM controller_status WHERE controller_id = %s", cid
            )
            == [(True,)]
        ),
        timeout=20,
        what="the station online in the cloud",
    )
    charge_id = f"oc-{version}"
    started = partner.post("/v1/charges", {"outlet_id": outlet, "charge_id": charge_id})
    assert started.status_code in (201, 202), started.text
    wait_for(
        lambda: (
            [w["type"] for w in partner.webhooks(charge_id)][:2]
            == ["charge.started", "charge.current_rise"]
        ),
        timeout=30,
        what="started and current-rise webhooks",
    )
    time.sleep(4)  # a few (simulated) minutes of charging: meter values each minute
    stopped = partner.post(f"/v1/charges/{charge_id}/stop")
    assert stopped.status_code == 200, stopped.text
    wait_for(
        lambda: "charge.stopped" in [w["type"] for w in partner.webhooks(charge_id)],
        timeout=30,
        what="the charge.stopped webhook",
    )
    final = partner.webhooks(charge_id)[-1]["data"]
    ((meter_start, meter_stop),) = wait_for(
        lambda: query(
            inst.database,
            "SELECT meter_start_wh, meter_stop_wh FROM ocpp_transactions"
            " WHERE controller_id = %s AND meter_stop_wh IS NOT NULL",
            cid,
        ),
        timeout=10,
        what="the transaction recorded with its meterStop",
    )
    assert meter_stop > meter_start
    assert final["energy_wh"] == pytest.approx(meter_stop - meter_start, abs=1.0)
    rows = query(
        inst.database,
        "SELECT current_a, voltage_v, power_w, soc_percent FROM outlet_readings"
        " WHERE controller_id = %s AND current_a > 0 ORDER BY minute",
        cid,
    )
    assert len(rows) >= 2, "the station's minutes while charging are stored"
    if version == "2.0.1":  # a 144 kW DC charge: wire version 2's limits and fields
        assert rows[-1] == (180.0, 800.0, 144_000.0, 40.0)
    else:  # an AC wallbox: version 1's fields, as from an outlet controller
        assert rows[-1] == (16.0, 200.0, None, None)
    assert station.plugs[0].transaction is None

"""OCPP stations end to end, nothing mocked: the ``ocpp`` package's charge point side (1.6J
and 2.0.1) against ``chargeline ocpp``, with the broker, ingest, the authorization server,
the gateway and the partner's webhook receiver all real. The partner uses the same API as
for an outlet controller and hears the same webhooks."""

from __future__ import annotations

import time

import pytest

from tests.db import query
from tests.partners import Partner, chargeline
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
    stations.online(version)
    booted = wait_for(
        lambda: query(
            inst.database,
            "SELECT vendor, model, booted_at IS NOT NULL FROM ocpp_stations WHERE controller_id = %s"
            " AND booted_at IS NOT NULL",
            cid,
        ),
        timeout=10,
        what="the BootNotification's vendor and model recorded for the operator",
    )
    assert booted == [("chargeline-sim", "sim", True)]
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
    meter_start, meter_stop = stations.closed_transaction(version)
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


def test_a_residents_card_starts_a_charge_billed_to_its_client(
    partner: Partner, stations: Stations
) -> None:
    inst = stations.installation
    tag = "04A1B2C3D4E5F6"
    cards = inst.tmp / "cards.toml"
    cards.write_text(f'[[rfid_tags]]\nid_tag = "{tag}"\nclient_id = "{partner.client.client_id}"\n')
    imported = chargeline(inst, "registry", "import", str(cards))
    assert imported.returncode == 0, imported.stderr
    unknown = inst.tmp / "unknown.toml"
    unknown.write_text('[[rfid_tags]]\nid_tag = "X1"\nclient_id = "no-such-client"\n')
    refused = chargeline(inst, "registry", "import", str(unknown))
    assert refused.returncode != 0 and "no partner client 'no-such-client'" in refused.stderr

    station = stations.start(stations.station("2.0.1"))
    cid = stations.cids["2.0.1"]
    stations.online("2.0.1")
    run = stations.loop.run
    assert run(station.swipe("NOT-A-CARD")) is False, "an unknown card is refused"
    assert station.plugs[0].transaction is None
    wait_for(lambda: run(station.swipe(tag)), timeout=10, what="the card accepted")
    charge_id = f"rfid-{cid}-{station.plugs[0].transaction}"
    wait_for(
        lambda: (
            [w["type"] for w in partner.webhooks(charge_id)][:2]
            == ["charge.started", "charge.current_rise"]
        ),
        timeout=30,
        what="the card's charge started, to the card's client",
    )
    time.sleep(3)
    run(station.end(station.plugs[0], "Local"))  # the resident stops at the station
    wait_for(
        lambda: "charge.stopped" in [w["type"] for w in partner.webhooks(charge_id)],
        timeout=30,
        what="the card's charge stopped",
    )
    meter_start, meter_stop = stations.closed_transaction("2.0.1")
    assert query(
        inst.database, "SELECT id_tag FROM ocpp_transactions WHERE controller_id = %s", cid
    ) == [(tag,)]
    final = partner.webhooks(charge_id)[-1]["data"]
    assert final["energy_wh"] == pytest.approx(meter_stop - meter_start, abs=1.0)
    charge = partner.get(f"/v1/charges/{charge_id}").json()
    assert charge["state"] == "stopped" and charge["outlet_id"] == stations.outlets["2.0.1"]
    assert charge["fee"] > 0, "billed at the site's tariff like any other charge"

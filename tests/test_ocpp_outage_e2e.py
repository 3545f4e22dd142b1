"""A station that loses its connection mid-charge: it keeps charging and metering, queues
its messages, and sends them once back. Every minute is stored once, the transaction closes
with the energy of its own register, and the partner hears offline then online, in order."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from tests.db import query
from tests.partners import Partner
from tests.procs import wait_for
from tests.stations import Stations

pytestmark = pytest.mark.processes


def test_a_station_back_from_an_outage_loses_and_repeats_nothing(
    partner: Partner, stations: Stations
) -> None:
    inst = stations.installation
    cid = stations.cids["1.6"]
    station = stations.start(stations.station("1.6"))
    outlet = stations.outlets["1.6"]
    started = partner.post("/v1/charges", {"outlet_id": outlet, "charge_id": "through-outage"})
    assert started.status_code in (201, 202), started.text
    wait_for(
        lambda: "charge.current_rise" in [w["type"] for w in partner.webhooks("through-outage")],
        timeout=30,
        what="the charge drawing current",
    )
    dropped_at = inst.now()
    stations.loop.run(station.drop(6))  # six real seconds: six minutes of simulated time

    def presence() -> list[str]:
        return [
            body["type"]
            for body in partner.events(
                lambda b: (
                    b["type"].startswith("controller.") and b["data"].get("controller_id") == cid
                )
            )
        ]

    wait_for(
        lambda: presence()[-1:] == ["controller.offline"],
        timeout=20,
        what="the controller.offline webhook",
    )
    time.sleep(2)
    assert len(station.queued) >= 2, "the station queued its minutes while away"
    wait_for(
        lambda: presence()[-2:] == ["controller.offline", "controller.online"],
        timeout=30,
        what="the controller.online webhook after the outage",
    )
    back_at = inst.now()
    wait_for(lambda: not station.queued, timeout=20, what="the queue sent")
    stopped = partner.post("/v1/charges/through-outage/stop")
    assert stopped.status_code == 200, stopped.text
    wait_for(
        lambda: "charge.stopped" in [w["type"] for w in partner.webhooks("through-outage")],
        timeout=30,
        what="the charge.stopped webhook",
    )
    meter_start, meter_stop = stations.closed_transaction("1.6")
    final = partner.webhooks("through-outage")[-1]["data"]
    assert final["energy_wh"] == pytest.approx(meter_stop - meter_start, abs=1.0)

    # Every minute the station metered while charging is stored, each once.
    time.sleep(3)  # the minutes after the stop are framed as the station moves on
    minutes = [
        m
        for (m,) in query(
            inst.database,
            "SELECT extract(epoch FROM minute)::bigint FROM outlet_readings"
            " WHERE controller_id = %s ORDER BY minute",
            cid,
        )
    ]
    assert len(minutes) == len(set(minutes))
    assert minutes == list(range(minutes[0], minutes[-1] + 60, 60)), "no minute missing"
    away = range(int(dropped_at // 60 + 1) * 60, int(back_at // 60) * 60, 60)
    assert len(away) >= 4 and set(away) <= set(minutes), "the minutes metered while away"
    assert presence()[-2:] == ["controller.offline", "controller.online"]


def test_a_silent_station_goes_offline_and_its_charge_still_ends_at_its_end_at(
    partner: Partner, stations: Stations
) -> None:
    """A hung charger keeps its socket open and sends nothing: after 2.5 heartbeat
    intervals the bridge disconnects it (the partner hears controller.offline). A charge
    with an end time is ended by the bridge's own timer, as by an edge's."""
    inst = stations.installation
    cid = stations.cids["1.6"]
    station = stations.start(stations.station("1.6"))
    end_at = inst.now() + 6 * 60  # six simulated minutes: six real seconds
    started = partner.post(
        "/v1/charges",
        {
            "outlet_id": stations.outlets["1.6"],
            "charge_id": "short",
            "end_at": dt.datetime.fromtimestamp(end_at, dt.UTC).isoformat(),
        },
    )
    assert started.status_code in (201, 202), started.text
    stopped = wait_for(
        lambda: partner.event("charge.stopped", charge_id="short"),
        timeout=40,
        what="the charge ended at its end_at",
    )
    assert stopped["data"]["reason"] == "end_at reached"
    assert stopped["data"]["at"] >= end_at - 2
    assert station.plugs[0].transaction is None

    station.behaviour.silent = True
    wait_for(
        lambda: partner.event("controller.offline", controller_id=cid, reason="silent for 150 s"),
        timeout=30,
        what="the silent station taken offline",
    )

"""What the OCPP bridge refuses, and that no refusal stops it or touches another station:
unknown stations, wrong passwords, another station's password, a revoked credential, a
station that offers the wrong OCPP version, malformed frames, unknown actions, a start the
station rejects and one it never answers. Nothing mocked: the ``ocpp`` package's charge
point side against ``chargeline ocpp`` with the whole stack behind it."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from ocpp.v16 import call as c16
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ocpp_bridge.simulated import Behaviour
from tests.db import query
from tests.ops import lint, ready, scrape
from tests.partners import Partner, chargeline
from tests.procs import wait_for
from tests.stations import Stations

pytestmark = pytest.mark.processes


async def _upgrade(url: str, protocol: str, headers: dict[str, str] | None = None) -> int:
    """The HTTP status of a WebSocket upgrade (101 when it went through)."""
    try:
        ws = await connect(url, subprotocols=[protocol], additional_headers=headers or {})  # type: ignore[list-item]
    except InvalidStatus as exc:
        return exc.response.status_code
    await ws.close()
    return 101


def test_stations_are_refused_at_the_upgrade_unless_they_prove_who_they_are(
    partner: Partner, stations: Stations
) -> None:
    good = stations.start(stations.station("1.6"))  # a station that keeps working throughout
    run = stations.loop.run
    wallbox = stations.ids["1.6"]
    assert run(_upgrade(f"{stations.url}/NO-SUCH-STATION", "ocpp1.6")) == 404
    assert run(_upgrade(f"{stations.url}/{wallbox}", "ocpp1.6")) == 401  # no password
    wrong = stations.station("2.0.1", password="not-the-password")
    assert run(_attempt(wrong)) == 401
    # Another station's password is not this station's.
    borrowed = stations.station("2.0.1", password=stations.passwords[wallbox])
    assert run(_attempt(borrowed)) == 401
    # The right password, the wrong OCPP version: the registry says 2.0.1.
    wrong_version = stations.station("2.0.1")
    wrong_version.version = "1.6"
    assert run(_attempt(wrong_version)) == 400
    assert run(_attempt(stations.station("2.0.1"))) == 101

    revoked = chargeline(
        stations.installation, "broker", "credentials", "revoke", stations.cids["2.0.1"]
    )
    assert revoked.returncode == 0, revoked.stderr
    wait_for(
        lambda: run(_attempt(stations.station("2.0.1"))) == 401,
        timeout=10,
        what="the revoked station refused",
    )
    assert good.connected.is_set(), "the other station's connection was never touched"
    assert run(good.call(c16.Heartbeat())) is not None

    # The operator's monitoring sees it all, in names Prometheus's own checker accepts.
    assert ready(stations.ops).status_code == 200
    lint(stations.ops)
    metrics = scrape(stations.ops)
    assert metrics["chargeline_ocpp_stations"][(("state", "connected"),)] == 1
    refused = metrics["chargeline_ocpp_refused_connections_total"]
    assert refused[(("reason", "no such station"),)] == 1
    assert refused[(("reason", "wrong password"),)] >= 2


async def _attempt(station: object) -> int:
    """Connect once as ``station``: 101 when admitted, else the refusal's status."""
    from ocpp_bridge.simulated import SimulatedStation

    assert isinstance(station, SimulatedStation)
    try:
        await asyncio.wait_for(station.session(), timeout=3)
    except TimeoutError:  # (an OSError too: caught first)
        return 101  # admitted, booted, and still connected
    except ConnectionClosed:
        return 0  # admitted, then closed by the bridge (a credential revoked meanwhile)
    except OSError as exc:
        if station.refused is None:
            raise AssertionError(f"not a refusal: {exc!r}") from exc
        return station.refused
    return 101


def test_malformed_frames_and_unknown_actions_are_logged_and_stop_nothing(
    partner: Partner, stations: Stations
) -> None:
    inst = stations.installation
    station = stations.start(stations.station("1.6"))
    run = stations.loop.run
    run(station.send_raw('[2, "x1", "BootNotification", {"chargePointVendor": '))  # cut short
    run(station.send_raw("\x00not json at all"))
    # An action OCPP does not have: the package answers it with a CALLERROR.
    run(station.send_raw('[2, "x2", "FlyToTheMoon", {}]'))
    assert run(station.call(c16.DataTransfer(vendor_id="acme"))).status == "UnknownVendorId"
    # Still served: the partner starts a charge on it.
    started = partner.post(
        "/v1/charges", {"outlet_id": stations.outlets["1.6"], "charge_id": "after-junk"}
    )
    assert started.status_code in (201, 202), started.text
    wait_for(
        lambda: "charge.started" in [w["type"] for w in partner.webhooks("after-junk")],
        timeout=30,
        what="a start after the junk",
    )
    frames = wait_for(
        lambda: query(
            inst.database,
            "SELECT frame FROM ocpp_frames WHERE station_id = %s AND direction = 'in'"
            " AND (frame LIKE '%%BootNotification\", {\"chargePointVendor\": ' OR frame LIKE '%%not json%%')",
            stations.ids["1.6"],
        ),
        timeout=10,
        what="the malformed frames in the raw log",
    )
    assert len(frames) == 2
    shown = chargeline(inst, "ocpp", "frames", stations.ids["1.6"], "--limit", "1000")
    assert shown.returncode == 0, shown.stderr
    assert "FlyToTheMoon" in shown.stdout and '[4,"x2","NotSupported"' in shown.stdout.replace(
        " ", ""
    )


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [("reject", "breaker command breaker_failed"), ("ignore", "start timed out")],
)
def test_a_start_the_station_refuses_or_never_answers_fails_by_webhook(
    partner: Partner, stations: Stations, behaviour: str, reason: str
) -> None:
    stubborn = stations.start(
        stations.station("2.0.1", behaviour=Behaviour(remote_start=behaviour))
    )
    other = stations.start(stations.station("1.6"))
    started = partner.post(
        "/v1/charges", {"outlet_id": stations.outlets["2.0.1"], "charge_id": "no-go"}
    )
    assert started.status_code in (201, 202), started.text
    failed = wait_for(
        lambda: partner.event("charge.failed", charge_id="no-go"),
        timeout=30,
        what="the charge.failed webhook",
    )
    assert failed["data"]["reason"] == reason
    assert stubborn.plugs[0].transaction is None
    # The other station was never held up by the silent one.
    ok = partner.post(
        "/v1/charges", {"outlet_id": stations.outlets["1.6"], "charge_id": "still-ok"}
    )
    assert ok.status_code in (201, 202), ok.text
    wait_for(
        lambda: "charge.started" in [w["type"] for w in partner.webhooks("still-ok")],
        timeout=30,
        what="the other station's start",
    )
    assert other.plugs[0].transaction is not None


def _trusting(stations: Stations, client: tuple[Path, Path] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(
        cafile=stations.installation.tmp / "data" / "pki" / "ca.pem"
    )
    if client is not None:
        context.load_cert_chain(*client)
    return context


@pytest.mark.ocpp_tls
def test_security_profiles_2_and_3_over_tls(partner: Partner, stations: Stations) -> None:
    """Profile 2: the password over TLS. Profile 3: the station's certificate from the
    project's PKI, whose CN names it; another station's certificate is refused."""
    inst, run = stations.installation, stations.loop.run
    wallbox = stations.station("1.6", tls=_trusting(stations))
    assert run(_attempt(wallbox)) == 101
    plain = stations.station("1.6")
    plain.url = plain.url.replace("wss://", "ws://")
    with pytest.raises(Exception):  # noqa: B017  (the TLS endpoint speaks no plain HTTP)
        run(plain.session(), timeout=10)

    certs = {}
    for version in ("1.6", "2.0.1"):
        issued = chargeline(inst, "pki", "client", stations.cids[version])
        assert issued.returncode == 0, issued.stderr
        lines = dict(line.split(maxsplit=1) for line in issued.stdout.splitlines())
        certs[version] = (Path(lines["certificate"]), Path(lines["key"].split(" (")[0]))
    charger = stations.station("2.0.1", password=None, tls=_trusting(stations, certs["2.0.1"]))
    wait_for(lambda: run(_attempt(charger)) == 101, timeout=10, what="profile 3 admitted")
    borrowed = stations.station("2.0.1", password=None, tls=_trusting(stations, certs["1.6"]))
    assert run(_attempt(borrowed)) == 403

    # The station works over it: the partner starts and stops a charge.
    stations.start(
        stations.station("2.0.1", password=None, tls=_trusting(stations, certs["2.0.1"]))
    )
    started = partner.post(
        "/v1/charges", {"outlet_id": stations.outlets["2.0.1"], "charge_id": "tls-1"}
    )
    assert started.status_code in (201, 202), started.text
    wait_for(
        lambda: "charge.started" in [w["type"] for w in partner.webhooks("tls-1")],
        timeout=30,
        what="a start over profile 3",
    )

"""The demo's apartment car park: one site, its controllers and outlets."""

from __future__ import annotations

from dataclasses import dataclass

from store.registry_file import (
    ConnectorEntry,
    ControllerEntry,
    OutletEntry,
    Registry,
    SiteEntry,
    StationEntry,
)

SITE = "harbor-view"


@dataclass(frozen=True)
class DemoStation:
    """One of the car park's OCPP stations, as the registry and the simulator see it."""

    station_id: str
    controller_id: str
    version: str
    outlet_id: str
    current_type: str
    rated_current_a: float
    rated_power_kw: float


#: An AC wallbox speaking OCPP 1.6J and a 150 kW DC fast charger speaking OCPP 2.0.1.
STATIONS = (
    DemoStation("HV-WB-01", "hv-wb-01", "1.6", "HV-WB-1", "AC", 32, 7.4),
    DemoStation("HV-DC-01", "hv-dc-01", "2.0.1", "HV-DC-1", "DC", 400, 150),
)


def controller_id_of(number: int) -> str:
    return f"hv-ctl-{number:02d}"


def outlet_id_of(controller_id: str, outlet: int) -> str:
    """What the outlet's QR code carries: controller ``hv-ctl-02``, outlet 3 → ``HV-02-3``."""
    return f"HV-{controller_id.rsplit('-', 1)[-1]}-{outlet}"


def sample_registry(controllers: int, outlets: int) -> Registry:
    return Registry(
        sites=[
            SiteEntry(
                id=SITE,
                name="Harbor View Apartments",
                location="Toyama, JP",
                timezone="Asia/Tokyo",
                # Load management: a 150 A main breaker for the building (its own peak is
                # 30 A) and 26 outlets: the evening's cars ask about twice what is left.
                contract_current_a=150,
                building_peak_a=30,
                tariff_per_kwh=31.5,
                currency="JPY",
                latitude=36.6959,
                longitude=137.2137,
                address="1-1 Shintomicho, Toyama",
                access_notes="Level B1; the gate opens with the app",
            )
        ],
        controllers=[
            ControllerEntry(
                id=(cid := controller_id_of(c)),
                site=SITE,
                outlets=[
                    OutletEntry(number=n, outlet_id=outlet_id_of(cid, n))
                    for n in range(1, outlets + 1)
                ],
            )
            for c in range(1, controllers + 1)
        ],
        stations=[
            StationEntry(
                id=st.station_id,
                controller_id=st.controller_id,
                site=SITE,
                ocpp_version=st.version,
                connectors=[
                    ConnectorEntry(
                        number=1,
                        outlet_id=st.outlet_id,
                        current_type=st.current_type,
                        rated_current_a=st.rated_current_a,
                        rated_power_kw=st.rated_power_kw,
                    )
                ],
            )
            for st in STATIONS
        ],
    )

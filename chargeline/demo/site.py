"""The demo's apartment car park: one site, its controllers and outlets."""

from __future__ import annotations

from store.registry_file import ControllerEntry, OutletEntry, Registry, SiteEntry

SITE = "harbor-view"


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
                contract_current_a=200,
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
    )

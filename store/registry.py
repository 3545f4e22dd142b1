"""The registry in the database: importing a registry file, and the cache ingest checks against."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg

from schemas.errors import InputError
from store.registry_file import Registry, RfidTagEntry, SiteEntry, StationEntry

log = logging.getLogger(__name__)

#: The base tariff's ``valid_from``: in force since the beginning (of Unix time, before
#: any charge; a finite instant, which every client library can read).
_BEGINNING = "1970-01-01T00:00:00+00:00"

_SITE_COLUMNS = (
    "name, location, timezone, contract_current_a, tariff_per_kwh, currency,"
    " latitude, longitude, address, opening_hours, access_notes, cap_margin_a, building_peak_a"
)
_UPSERT_SITE = f"""
INSERT INTO sites AS t (site_id, {_SITE_COLUMNS})
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (site_id) DO UPDATE SET ({_SITE_COLUMNS}, updated_at)
    = ROW({", ".join(f"excluded.{c.strip()}" for c in _SITE_COLUMNS.split(","))}, now())
WHERE ({", ".join(f"t.{c.strip()}" for c in _SITE_COLUMNS.split(","))})
    IS DISTINCT FROM ({", ".join(f"excluded.{c.strip()}" for c in _SITE_COLUMNS.split(","))})
RETURNING (xmax = 0) AS inserted
"""

#: A site's tariffs are the file's: its base price from the beginning (``_BEGINNING``) and
#: each dated one. A charge keeps the price it started under (``charges.tariff_per_kwh``),
#: so changing or removing a tariff here never reprices a charge already recorded.
_UPSERT_TARIFF = """
INSERT INTO site_tariffs AS t (site_id, valid_from, per_kwh) VALUES (%s, %s, %s)
ON CONFLICT (site_id, valid_from) DO UPDATE SET per_kwh = excluded.per_kwh
WHERE t.per_kwh IS DISTINCT FROM excluded.per_kwh
RETURNING (xmax = 0) AS inserted
"""
_REMOVE_TARIFFS = (
    "DELETE FROM site_tariffs WHERE site_id = %s AND NOT valid_from = ANY(%s::timestamptz[])"
)

_UPSERT_CONTROLLER = """
INSERT INTO controllers AS t (controller_id, site_id, has_main_meter, safe_share_a)
VALUES (%s, %s, %s, %s)
ON CONFLICT (controller_id) DO UPDATE SET
    site_id = excluded.site_id, has_main_meter = excluded.has_main_meter,
    safe_share_a = excluded.safe_share_a, updated_at = now()
WHERE (t.site_id, t.has_main_meter, t.safe_share_a)
    IS DISTINCT FROM (excluded.site_id, excluded.has_main_meter, excluded.safe_share_a)
RETURNING (xmax = 0) AS inserted
"""

_UPSERT_OUTLET = """
INSERT INTO outlets AS t
    (outlet_id, controller_id, outlet_no, rated_current_a, rise_threshold_a, in_service, kind)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (outlet_id) DO UPDATE SET
    controller_id = excluded.controller_id, outlet_no = excluded.outlet_no,
    rated_current_a = excluded.rated_current_a, rise_threshold_a = excluded.rise_threshold_a,
    in_service = excluded.in_service, kind = excluded.kind, updated_at = now()
WHERE (t.controller_id, t.outlet_no, t.rated_current_a, t.rise_threshold_a, t.in_service,
       t.kind)
    IS DISTINCT FROM (excluded.controller_id, excluded.outlet_no,
                      excluded.rated_current_a, excluded.rise_threshold_a, excluded.in_service,
                      excluded.kind)
RETURNING (xmax = 0) AS inserted
"""

_UPSERT_STATION = """
INSERT INTO ocpp_stations AS t (station_id, controller_id, ocpp_version) VALUES (%s, %s, %s)
ON CONFLICT (station_id) DO UPDATE SET
    controller_id = excluded.controller_id, ocpp_version = excluded.ocpp_version,
    updated_at = now()
WHERE (t.controller_id, t.ocpp_version) IS DISTINCT FROM (excluded.controller_id,
                                                          excluded.ocpp_version)
RETURNING (xmax = 0) AS inserted
"""

_UPSERT_CONNECTOR = """
INSERT INTO ocpp_connectors AS t
    (controller_id, outlet_no, evse_id, connector_id, current_type, rated_power_kw)
VALUES (%s, %s, %s, %s, %s, %s)
ON CONFLICT (controller_id, outlet_no) DO UPDATE SET
    evse_id = excluded.evse_id, connector_id = excluded.connector_id,
    current_type = excluded.current_type, rated_power_kw = excluded.rated_power_kw
WHERE (t.evse_id, t.connector_id, t.current_type, t.rated_power_kw)
    IS DISTINCT FROM (excluded.evse_id, excluded.connector_id, excluded.current_type,
                      excluded.rated_power_kw)
RETURNING (xmax = 0) AS inserted
"""

_UPSERT_TAG = """
INSERT INTO rfid_tags AS t (id_tag, client_id, valid) VALUES (%s, %s, %s)
ON CONFLICT (id_tag) DO UPDATE SET
    client_id = excluded.client_id, valid = excluded.valid, updated_at = now()
WHERE (t.client_id, t.valid) IS DISTINCT FROM (excluded.client_id, excluded.valid)
RETURNING (xmax = 0) AS inserted
"""


@dataclass
class ImportSummary:
    counts: Counter[str] = field(default_factory=Counter)

    def record(self, what: str, row: tuple[bool] | None) -> None:
        outcome = "unchanged" if row is None else ("added" if row[0] else "updated")
        self.counts[f"{what} {outcome}"] += 1

    def __str__(self) -> str:
        return (
            ", ".join(f"{n} {key}" for key, n in sorted(self.counts.items())) or "nothing to import"
        )


def import_registry(url: str, registry: Registry) -> ImportSummary:
    """Upsert every site (with its tariffs), controller and outlet in one transaction.
    Re-importing is a no-op."""
    summary = ImportSummary()
    with psycopg.connect(url) as conn, conn.transaction():
        for s in registry.sites:
            row = conn.execute(
                _UPSERT_SITE,
                (
                    s.id,
                    s.name,
                    s.location,
                    s.timezone,
                    s.contract_current_a,
                    s.tariff_per_kwh,
                    s.currency,
                    s.latitude,
                    s.longitude,
                    s.address,
                    s.opening_hours,
                    s.access_notes,
                    s.cap_margin_a,
                    s.building_peak_a,
                ),
            ).fetchone()
            summary.record("sites", row)
            _import_tariffs(conn, s, summary)
        for c in registry.controllers:
            row = conn.execute(
                _UPSERT_CONTROLLER, (c.id, c.site, c.has_main_meter, c.safe_share_a)
            ).fetchone()
            summary.record("controllers", row)
            for o in c.outlets:
                row = conn.execute(
                    _UPSERT_OUTLET,
                    (
                        o.outlet_id,
                        c.id,
                        o.number,
                        o.rated_current_a,
                        o.rise_threshold_a,
                        o.in_service,
                        "ac_outlet",
                    ),
                ).fetchone()
                summary.record("outlets", row)
        for station in registry.stations:
            _import_station(conn, station, summary)
        _import_tags(conn, registry.rfid_tags, summary)
    return summary


def _import_station(
    conn: psycopg.Connection[Any], station: StationEntry, summary: ImportSummary
) -> None:
    """A station is a controller (without a main meter) whose connectors are its outlets."""
    cid = station.cid
    taken = conn.execute(
        "SELECT station_id FROM ocpp_stations WHERE controller_id = %s AND station_id <> %s",
        (cid, station.id),
    ).fetchone()
    if taken is not None:
        raise InputError(
            f"station {station.id!r}: controller id {cid!r} already belongs to station"
            f" {taken[0]!r}",
            station=station.id,
        )
    summary.record(
        "stations",
        conn.execute(
            _UPSERT_CONTROLLER, (cid, station.site, False, station.safe_share_a)
        ).fetchone(),
    )
    conn.execute(_UPSERT_STATION, (station.id, cid, station.ocpp_version))
    for c in station.connectors:
        kind = "ocpp_dc" if c.current_type == "DC" else "ocpp_ac"
        row = conn.execute(
            _UPSERT_OUTLET,
            (c.outlet_id, cid, c.number, c.rated_current_a, c.rise_threshold_a, c.in_service, kind),
        ).fetchone()
        summary.record("connectors", row)
        evse = c.evse if station.ocpp_version == "2.0.1" else c.connector
        conn.execute(
            _UPSERT_CONNECTOR,
            (cid, c.number, evse, c.connector, c.current_type, c.rated_power_kw),
        )


def _import_tags(
    conn: psycopg.Connection[Any], tags: list[RfidTagEntry], summary: ImportSummary
) -> None:
    if not tags:
        return
    known = {
        client_id
        for (client_id,) in conn.execute(
            "SELECT client_id FROM oauth_clients WHERE client_id = ANY(%s)",
            ([t.client_id for t in tags],),
        )
    }
    unknown = sorted({t.client_id for t in tags} - known)
    if unknown:
        raise InputError(
            f"rfid_tags: no partner client {unknown[0]!r} (chargeline clients list)",
            client_id=unknown[0],
        )
    for tag in tags:
        summary.record(
            "rfid tags",
            conn.execute(_UPSERT_TAG, (tag.id_tag, tag.client_id, tag.valid)).fetchone(),
        )


def _import_tariffs(conn: psycopg.Connection[Any], site: SiteEntry, summary: ImportSummary) -> None:
    tariffs = [(_BEGINNING, site.tariff_per_kwh)]
    tariffs += [(t.valid_from.isoformat(), t.per_kwh) for t in site.tariffs]
    for valid_from, per_kwh in tariffs:
        row = conn.execute(_UPSERT_TARIFF, (site.id, valid_from, per_kwh)).fetchone()
        summary.record("tariffs", row)
    removed = conn.execute(_REMOVE_TARIFFS, (site.id, [t for t, _ in tariffs])).rowcount
    if removed:
        summary.counts["tariffs removed"] += removed


@dataclass(frozen=True)
class RegistrySnapshot:
    """Which controllers exist and which outlet numbers each has. Immutable; swapped whole."""

    outlets: dict[str, frozenset[int]] = field(default_factory=dict)

    def knows(self, controller_id: str) -> bool:
        return controller_id in self.outlets

    @classmethod
    async def load(cls, conn: psycopg.AsyncConnection) -> RegistrySnapshot:
        cur = await conn.execute(
            "SELECT c.controller_id, array_remove(array_agg(o.outlet_no), NULL)"
            " FROM controllers c LEFT JOIN outlets o USING (controller_id) GROUP BY 1"
        )
        return cls({cid: frozenset(numbers) for cid, numbers in await cur.fetchall()})

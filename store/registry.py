"""The registry in the database: importing a registry file, and the cache ingest checks against."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import psycopg

from store.registry_file import Registry

log = logging.getLogger(__name__)

_UPSERT_SITE = """
INSERT INTO sites AS t (site_id, name, location, timezone, contract_current_a, tariff_per_kwh, currency)
VALUES (%s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (site_id) DO UPDATE SET
    name = excluded.name, location = excluded.location, timezone = excluded.timezone,
    contract_current_a = excluded.contract_current_a, tariff_per_kwh = excluded.tariff_per_kwh,
    currency = excluded.currency, updated_at = now()
WHERE (t.name, t.location, t.timezone, t.contract_current_a, t.tariff_per_kwh, t.currency)
    IS DISTINCT FROM (excluded.name, excluded.location, excluded.timezone,
                      excluded.contract_current_a, excluded.tariff_per_kwh, excluded.currency)
RETURNING (xmax = 0) AS inserted
"""

_UPSERT_CONTROLLER = """
INSERT INTO controllers AS t (controller_id, site_id, has_main_meter) VALUES (%s, %s, %s)
ON CONFLICT (controller_id) DO UPDATE SET
    site_id = excluded.site_id, has_main_meter = excluded.has_main_meter, updated_at = now()
WHERE (t.site_id, t.has_main_meter) IS DISTINCT FROM (excluded.site_id, excluded.has_main_meter)
RETURNING (xmax = 0) AS inserted
"""

_UPSERT_OUTLET = """
INSERT INTO outlets AS t (outlet_id, controller_id, outlet_no, rated_current_a, rise_threshold_a)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (outlet_id) DO UPDATE SET
    controller_id = excluded.controller_id, outlet_no = excluded.outlet_no,
    rated_current_a = excluded.rated_current_a, rise_threshold_a = excluded.rise_threshold_a,
    updated_at = now()
WHERE (t.controller_id, t.outlet_no, t.rated_current_a, t.rise_threshold_a)
    IS DISTINCT FROM (excluded.controller_id, excluded.outlet_no,
                      excluded.rated_current_a, excluded.rise_threshold_a)
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
    """Upsert every site, controller and outlet in one transaction. Re-importing is a no-op."""
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
                ),
            ).fetchone()
            summary.record("sites", row)
        for c in registry.controllers:
            row = conn.execute(_UPSERT_CONTROLLER, (c.id, c.site, c.has_main_meter)).fetchone()
            summary.record("controllers", row)
            for o in c.outlets:
                row = conn.execute(
                    _UPSERT_OUTLET,
                    (o.outlet_id, c.id, o.number, o.rated_current_a, o.rise_threshold_a),
                ).fetchone()
                summary.record("outlets", row)
    return summary


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

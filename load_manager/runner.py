"""The sites' allocator (``chargeline loads``): the cloud level of site load management.

Every ``period_s`` it runs ``charging.allocation.allocate`` for each site it leads and
publishes each controller's ``Budget`` (retained, on ``ctl/{cid}/budget``); the edges and
the OCPP bridge enforce them (``edge_agent.budget``). Its inputs are the controllers'
``load`` reports (QoS 0, every few seconds), the site's cap in force (``charging.caps``,
from the registry and the operator's windows) and the building's load (the registry's
``building_peak_a``; a controller carrying the site's main meter reports it instead).

One instance leads a site at a time: it holds a PostgreSQL advisory lock per site on a
connection of its own, so a second instance (a standby) takes over the sites whose lock
it can take, within a period of the first one's connection closing. Budget versions are
the cloud clock in milliseconds, so they grow across restarts and take-overs.

What it measured and decided is written every period to ``site_load`` (the live view and
the console draw the cap against the site's current from it), and each waiting charge's
estimated start to ``charges.expected_start_at`` (the partner API and ``charge.paused``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import aiomqtt
import psycopg

from charging import allocation, caps
from charging.allocation import ControllerView, OutletView
from kernel import mqtt
from kernel.times import utc
from load_manager.settings import LoadSettings
from schemas.codec import CodecError, decode, encode
from schemas.messages import Budget, LoadReport
from schemas.topics import TopicKind

log = logging.getLogger(__name__)


@dataclass
class Site:
    site_id: str
    contract_a: float
    margin_a: float | None
    building_peak_a: float
    #: controller id → its safe share as the registry writes it (None: an equal part).
    written: dict[str, float | None] = field(default_factory=dict)
    windows: list[caps.Window] = field(default_factory=list)


@dataclass
class Led:
    """What the allocator remembers of a site it leads."""

    tracks: dict[allocation.Key, allocation.Track] = field(default_factory=dict)
    waiting: int = 0
    cap: caps.Cap | None = None
    site_a: float = 0.0
    allocated_a: float = 0.0


class LoadManager:
    def __init__(self, settings: LoadSettings, database_url: str) -> None:
        self.settings = settings
        self.url = database_url
        self.topics = settings.topics
        self.reports: dict[str, tuple[LoadReport, float]] = {}
        self.sites: dict[str, Site] = {}
        self.led: dict[str, Led] = {}
        self.mqtt_connected = False
        self.database_ok = False
        self.budgets_published = 0
        self.bad_reports = 0
        self._client: aiomqtt.Client | None = None
        self._version = 0

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._mqtt_forever(), name="loads-mqtt")
            tasks.create_task(self._allocate_forever(), name="loads-allocate")

    # --- the controllers' load reports -----------------------------------------------------
    async def _mqtt_forever(self) -> None:
        delays = mqtt.backoff()
        url = self.settings.mqtt
        while True:
            try:
                async with mqtt.client(
                    url, identifier=self.settings.client_id, clean_session=True, keepalive=30
                ) as client:
                    await client.subscribe(self.topics.all_controllers(TopicKind.LOAD), qos=0)
                    self._client = client
                    self.mqtt_connected = True
                    delays = mqtt.backoff()
                    log.info("MQTT: connected to %r as %s", url, self.settings.client_id)
                    async for message in client.messages:
                        payload = message.payload if isinstance(message.payload, bytes) else b""
                        self.on_report(message.topic.value, payload)
            except aiomqtt.MqttError as exc:
                self._client = None
                self.mqtt_connected = False
                await mqtt.link_down(exc, url, delays, log)

    def on_report(self, topic: str, payload: bytes) -> None:
        parsed = self.topics.parse(topic)
        if parsed is None or parsed.kind is not TopicKind.LOAD:
            return
        try:
            report = decode(LoadReport, payload)
        except CodecError as exc:
            self.bad_reports += 1
            log.warning("%s: ignoring a bad load report: %s", parsed.controller_id, exc)
            return
        if report.controller_id != parsed.controller_id:
            self.bad_reports += 1
            log.warning(
                "%s: ignoring a load report for %s", parsed.controller_id, report.controller_id
            )
            return
        self.reports[report.controller_id] = (report, self.settings.now())

    # --- allocation ------------------------------------------------------------------------
    async def _allocate_forever(self) -> None:
        delays = mqtt.backoff()
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
                    self.database_ok = True
                    await self._lead(conn)
            except psycopg.Error as exc:
                self.database_ok = False
                self.led.clear()  # the locks went with the connection
                delay = next(delays)
                log.warning("database failed (%s); reconnecting in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    async def _lead(self, conn: psycopg.AsyncConnection[Any]) -> None:
        refreshed = 0.0
        pruned = 0.0
        while True:
            began = time.monotonic()
            if began - refreshed >= self.settings.sites_refresh_s:
                await self._refresh(conn)
                refreshed = began
            if began - pruned >= 3600:
                await conn.execute(
                    "DELETE FROM site_load WHERE at < now() - %s * interval '1 hour'",
                    (self.settings.history_hours,),
                )
                pruned = began
            await self._windows(conn)
            for site in self.sites.values():
                if site.site_id not in self.led and await self._take(conn, site.site_id):
                    log.info("leading site %s", site.site_id)
                    self.led[site.site_id] = Led()
            for site_id in list(self.led):
                led_site = self.sites.get(site_id)
                if led_site is not None:
                    await self.step(conn, led_site)
            elapsed = time.monotonic() - began
            await asyncio.sleep(max(0.0, self.settings.period_s - elapsed))

    async def _take(self, conn: psycopg.AsyncConnection[Any], site_id: str) -> bool:
        cur = await conn.execute(
            "SELECT pg_try_advisory_lock(hashtextextended('chargeline-loads:' || %s, 0))",
            (site_id,),
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    async def _refresh(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Sites and their controllers' safe shares as the registry writes them."""
        cur = await conn.execute(
            "SELECT site_id, contract_current_a, cap_margin_a, building_peak_a FROM sites"
        )
        sites = {
            row[0]: Site(
                row[0], float(row[1]), None if row[2] is None else float(row[2]), float(row[3])
            )
            for row in await cur.fetchall()
        }
        cur = await conn.execute("SELECT controller_id, site_id, safe_share_a FROM controllers")
        for cid, site_id, share in await cur.fetchall():
            if site_id in sites:
                sites[site_id].written[cid] = None if share is None else float(share)
        self.sites = sites

    async def _windows(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Every site's cap windows in force now or later (re-read every period: an
        operator's change counts from the next period)."""
        for site in self.sites.values():
            site.windows = []
        sites = self.sites
        now = self.settings.now()
        cur = await conn.execute(
            "SELECT site_id, id, cap_a, extract(epoch FROM starts_at)::float8,"
            " extract(epoch FROM ends_at)::float8, reason, set_by,"
            " extract(epoch FROM created_at)::float8 FROM site_caps"
            " WHERE removed_at IS NULL AND (ends_at IS NULL OR ends_at > %s)",
            (utc(now),),
        )
        for site_id, *rest in await cur.fetchall():
            if site_id in sites:
                sites[site_id].windows.append(caps.Window(*rest))

    async def step(self, conn: psycopg.AsyncConnection[Any], site: Site) -> None:
        """One period at one site: allocate, publish the budgets, record what was decided."""
        now = self.settings.now()
        led = self.led[site.site_id]
        cap = caps.in_force(
            contract_a=site.contract_a, margin_a=site.margin_a, windows=site.windows, now=now
        )
        # The safe shares follow the cap in force: a lowered cap lowers them too.
        shares = allocation.safe_shares(cap.amps, site.building_peak_a, site.written)
        views: dict[str, ControllerView] = {}
        main_a: float | None = None
        outlets_a = 0.0
        for cid, share in shares.items():
            heard = self.reports.get(cid)
            if heard is None:
                views[cid] = ControllerView(cid, None, False, share)
                continue
            report, at = heard
            if report.main_current_a is not None:
                main_a = report.main_current_a
            outlets_a += sum(o.current_a for o in report.outlets)
            views[cid] = ControllerView(
                cid,
                at,
                report.modulating,
                share,
                tuple(
                    OutletView(o.outlet, o.wants, o.running, o.current_a, o.max_a, o.charge_id)
                    for o in report.outlets
                ),
            )
        building = site.building_peak_a if main_a is None else max(0.0, main_a - outlets_a)
        got = allocation.allocate(
            now=now,
            cap_a=cap.amps,
            building_a=building,
            controllers=views,
            tracks=led.tracks,
            settings=self.settings.allocation(),
        )
        led.tracks, led.cap, led.waiting = got.tracks, cap, got.waiting
        led.site_a = building + outlets_a
        led.allocated_a = sum(got.given.values())
        for note in got.notes:
            log.info("site %s: %s", site.site_id, note)
        await self._publish(shares, got, now)
        await self._record(
            conn, site, got, now=now, cap_a=cap.amps, building_a=building, outlets_a=outlets_a
        )

    async def _publish(
        self, shares: dict[str, float], got: allocation.Allocation, now: float
    ) -> None:
        client = self._client
        if client is None:
            return
        self._version = max(self._version + 1, int(now * 1000))
        expires = now + self.settings.allocation().expiry_s
        for cid, share in shares.items():
            amps, order, admit = got.budgets.get(cid, (share, (), 0))
            budget = Budget(cid, self._version, amps, order, admit, now, expires, share)
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(self.topics.budget(cid), encode(budget), qos=1, retain=True)
                self.budgets_published += 1

    async def _record(
        self,
        conn: psycopg.AsyncConnection[Any],
        site: Site,
        got: allocation.Allocation,
        *,
        now: float,
        cap_a: float,
        building_a: float,
        outlets_a: float,
    ) -> None:
        charging = sum(1 for amps in got.given.values() if amps > 0)
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO site_load VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT DO NOTHING",
                (
                    site.site_id,
                    utc(now),
                    cap_a,
                    building_a,
                    outlets_a,
                    sum(got.given.values()),
                    charging,
                    got.waiting,
                ),
            )
            ids = list(got.estimates)
            at = [None if t is None else utc(t) for t in got.estimates.values()]
            await conn.execute(
                "UPDATE charges c SET expected_start_at = e.at"
                " FROM unnest(%s::text[], %s::timestamptz[]) AS e(charge_id, at)"
                " WHERE c.charge_id = e.charge_id"
                " AND c.expected_start_at IS DISTINCT FROM e.at",
                (ids, at),
            )
            await conn.execute(
                "UPDATE charges SET expected_start_at = NULL"
                " WHERE controller_id = ANY(%s) AND expected_start_at IS NOT NULL"
                " AND NOT charge_id = ANY(%s)",
                (list(site.written), ids),
            )

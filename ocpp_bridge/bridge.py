"""``chargeline ocpp``: the OCPP-J endpoint, and each station as one more controller.

- **Endpoint.** ``ws[s]://HOST:PORT/ocpp/{station_id}`` (WebSocket, ``websockets``),
  subprotocol ``ocpp1.6`` or ``ocpp2.0.1``: the one the registry names for the station.
  Refused at the upgrade, before any OCPP: an unknown station (404), a station that does not
  offer its version (400), a wrong or missing password or a certificate of another station
  (401/403). Security profile 1 is HTTP Basic (username: the station id; password: the one
  ``chargeline broker credentials issue CONTROLLER_ID`` printed), 2 the same over TLS, 3 a
  client certificate from the project's PKI whose CN is the station's controller id.
- **One station, one controller.** Each station's ``Station`` speaks the wire contract on
  its controller's topics through the bridge's one MQTT connection (identity ``svc_ocpp``,
  which the broker lets speak for stations only).
- **Raw frame log.** Every frame in and out, parseable or not, goes to ``ocpp_frames``
  (``Journal``), kept ``frame_retention_days``; ``chargeline ocpp frames`` reads it.
- **One connection per station.** A station that connects again replaces its older
  connection; one silent for ``missed_heartbeats`` heartbeat intervals is disconnected.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import aiomqtt
import psycopg
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from charging import charges
from charging import commands as command_records
from edge_agent.clock import ScaledClock
from kernel import mqtt
from kernel.passwords import Checks
from kernel.times import utc, utc_or_none
from ocpp_bridge.protocol import V16, V201
from ocpp_bridge.settings import OcppSettings
from ocpp_bridge.station import Connector, Settings, Station, StationInfo, Transaction
from schemas.codec import encode
from schemas.topics import TopicKind

log = logging.getLogger(__name__)

PATH_PREFIX = "/ocpp/"
#: A charge started with a card ends after this long unless stopped (as a partner's start
#: without an end time).
LOCAL_CHARGE_S = 24 * 3600
#: Messages in flight to the broker at once (aiomqtt's max_inflight_messages matches it).
PUBLISH_WINDOW = 100


@dataclass(frozen=True)
class Secret:
    argon2: str | None
    revoked: bool
    cert_sha256: bytes | None


@dataclass(frozen=True)
class Snapshot:
    """What the bridge reads from the registry: stations, valid tags, station secrets."""

    stations: dict[str, StationInfo] = field(default_factory=dict)
    #: Valid RFID tags → the partner client billed for their charges.
    tags: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, Secret] = field(default_factory=dict)


async def load_snapshot(conn: psycopg.AsyncConnection[Any]) -> Snapshot:
    cur = await conn.execute(
        "SELECT s.station_id, s.controller_id, s.ocpp_version,"
        "       array_agg(ARRAY[c.outlet_no, c.evse_id, c.connector_id] ORDER BY c.outlet_no),"
        "       array_agg(c.current_type ORDER BY c.outlet_no),"
        "       array_agg(o.outlet_id ORDER BY c.outlet_no),"
        "       array_agg(o.rated_current_a ORDER BY c.outlet_no)"
        " FROM ocpp_stations s JOIN ocpp_connectors c USING (controller_id)"
        " JOIN outlets o ON o.controller_id = c.controller_id AND o.outlet_no = c.outlet_no"
        " GROUP BY 1, 2, 3"
    )
    stations = {
        sid: StationInfo(
            sid,
            cid,
            version,
            tuple(
                Connector(o, e, c, kind, public, float(rated))
                for (o, e, c), kind, public, rated in zip(plugs, kinds, ids, ratings, strict=True)
            ),
        )
        for sid, cid, version, plugs, kinds, ids, ratings in await cur.fetchall()
    }
    cur = await conn.execute("SELECT id_tag, client_id FROM rfid_tags WHERE valid")
    tags = dict(await cur.fetchall())
    cur = await conn.execute(
        "SELECT name, argon2, revoked_at IS NOT NULL, cert_sha256 FROM mqtt_identities"
        " WHERE role = 'station'"
    )
    found = {
        name: Secret(argon2, revoked, bytes(cert) if cert else None)
        for name, argon2, revoked, cert in await cur.fetchall()
    }
    return Snapshot(stations, tags, found)


#: Frames kept in memory while the database is away; beyond, the oldest are dropped (and
#: counted): the frame log is for inspection, and must not take the bridge's memory.
MAX_UNWRITTEN_FRAMES = 500_000


class Journal:
    """Writes queued by the handlers (which never wait for the database): raw frames,
    transactions and boot details. Flushed together every half second."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, float, str, str]] = []
        self.frames_dropped = 0
        self.transactions: dict[tuple[str, str], Transaction] = {}
        self.boots: dict[str, tuple[str, str, str | None, str | None, float]] = {}
        self.frames_logged = 0
        self.ok = False

    def frame(self, station_id: str, direction: str, text: str) -> None:
        if len(self.frames) >= MAX_UNWRITTEN_FRAMES:
            del self.frames[: MAX_UNWRITTEN_FRAMES // 10]
            self.frames_dropped += MAX_UNWRITTEN_FRAMES // 10
            log.error("journal: the database is away; %d raw frames dropped", self.frames_dropped)
        self.frames.append((station_id, time.time(), direction, text.replace("\x00", "\\u0000")))

    def transaction(self, transaction: Transaction, cid: str) -> None:
        self.transactions[(cid, transaction.transaction_id)] = transaction

    def boot(
        self, station_id: str, vendor: str, model: str, serial: str | None, firmware: str | None
    ) -> None:
        self.boots[station_id] = (vendor, model, serial, firmware, time.time())

    async def run(self, url: str, retention_days: float) -> None:
        delays = mqtt.backoff(first=0.5, cap=10.0)
        last_purge = 0.0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                    while True:
                        await self.flush(conn)
                        self.ok = True
                        delays = mqtt.backoff(first=0.5, cap=10.0)
                        if time.monotonic() - last_purge > 3600:
                            await conn.execute(
                                "DELETE FROM ocpp_frames WHERE at < now() - make_interval(secs => %s)",
                                (retention_days * 86400,),
                            )
                            last_purge = time.monotonic()
                        await asyncio.sleep(0.5)
            except psycopg.Error as exc:
                self.ok = False
                log.warning("journal: database unavailable (%s); keeping the writes", exc)
                await asyncio.sleep(next(delays))

    async def flush(self, conn: psycopg.AsyncConnection[Any]) -> None:
        frames, transactions, boots = self.frames, self.transactions, self.boots
        if not (frames or transactions or boots):
            return
        self.frames, self.transactions, self.boots = [], {}, {}
        try:
            async with conn.transaction():
                if frames:
                    async with conn.cursor().copy(
                        "COPY ocpp_frames (station_id, at, direction, frame) FROM STDIN"
                    ) as copy:
                        for sid, at, direction, text in frames:
                            await copy.write_row((sid, utc(at), direction, text))
                for (cid, tid), t in transactions.items():
                    await conn.execute(
                        "INSERT INTO ocpp_transactions AS t (controller_id, transaction_id,"
                        " outlet_no, id_tag, started_at, meter_start_wh, stopped_at,"
                        " meter_stop_wh, stop_reason) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)"
                        " ON CONFLICT (controller_id, transaction_id) DO UPDATE SET"
                        " stopped_at = coalesce(excluded.stopped_at, t.stopped_at),"
                        " meter_stop_wh = coalesce(excluded.meter_stop_wh, t.meter_stop_wh),"
                        " stop_reason = coalesce(excluded.stop_reason, t.stop_reason)",
                        (
                            cid,
                            tid,
                            t.outlet,
                            t.id_tag,
                            utc(t.started_at),
                            t.meter_start_wh,
                            utc_or_none(t.stopped_at),
                            t.meter_stop_wh,
                            t.stop_reason,
                        ),
                    )
                for sid, (vendor, model, serial, firmware, at) in boots.items():
                    await conn.execute(
                        "UPDATE ocpp_stations SET vendor = %s, model = %s, serial_number = %s,"
                        " firmware = %s, booted_at = %s WHERE station_id = %s",
                        (vendor, model, serial, firmware, utc(at), sid),
                    )
        except BaseException:
            # Nothing is lost: what could not be written waits for the next flush.
            self.frames[:0] = frames
            self.transactions = {**transactions, **self.transactions}
            self.boots = {**boots, **self.boots}
            raise
        self.frames_logged += len(frames)


class Wire:
    """A station's WebSocket as the ``ocpp`` package uses it, logging every frame."""

    def __init__(self, ws: ServerConnection, station_id: str, journal: Journal) -> None:
        self.ws, self.station_id, self.journal = ws, station_id, journal
        self.heard = time.monotonic()
        #: Why the bridge closed it, when it did (else the connection's own story).
        self.why: str | None = None

    async def recv(self) -> str:
        message = await self.ws.recv()
        self.heard = time.monotonic()
        text = message if isinstance(message, str) else message.decode("utf-8", "replace")
        self.journal.frame(self.station_id, "in", text)
        return text

    async def send(self, text: str) -> None:
        self.journal.frame(self.station_id, "out", text)
        await self.ws.send(text)


class Bridge:
    def __init__(self, settings: OcppSettings, database_url: str) -> None:
        self.settings = settings
        self.url = database_url
        self.topics = settings.topics
        self.clock = ScaledClock(settings.time_scale, start=settings.now())
        self.snapshot = Snapshot()
        self.stations: dict[str, Station] = {}  # by controller id
        self.links: dict[str, tuple[Any, Wire]] = {}  # controller id → (charge point, wire)
        self.journal = Journal()
        self._outbox: deque[tuple[str, bytes, bool]] = deque(maxlen=200_000)
        self._outbox_ready = asyncio.Event()
        self._client: aiomqtt.Client | None = None
        self.mqtt_connected = False
        self._subscribed: set[str] = set()
        self._passwords = Checks()
        self.refusals: dict[str, int] = {}
        self.port: int | None = None
        self.serving = asyncio.Event()
        self._local_starts: asyncio.Queue[tuple[Station, Transaction]] = asyncio.Queue()

    # --- the registry ----------------------------------------------------------------------
    def valid(self, id_tag: str) -> bool:
        return id_tag in self.snapshot.tags

    async def refresh(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.url) as conn:
            before, self.snapshot = self.snapshot, await load_snapshot(conn)
        for cid, (_, wire) in list(self.links.items()):
            old, new = before.secrets.get(cid), self.snapshot.secrets.get(cid)
            if new is None or new.revoked or (old is not None and old != new):
                # Revoked or rotated: the connection that proved the old credential ends.
                wire.why = (
                    "credential revoked" if new is None or new.revoked else "credential rotated"
                )
                self._passwords.forget(cid)
                self._tasks.create_task(wire.ws.close(1008, wire.why))
        config = Settings(
            data_dir=self.settings.data_dir,
            topics=self.topics,
            start_max_age_s=self.settings.start_max_age_s,
            transaction_wait_s=self.settings.transaction_wait_s,
        )
        for info in self.snapshot.stations.values():
            existing = self.stations.get(info.controller_id)
            if existing is None or existing.info != info:
                if existing is not None and info.controller_id in self.links:
                    continue  # changed while connected: taken up at its next connection
                if existing is not None:
                    existing.close()
                station = Station(
                    info,
                    config,
                    clock=self.clock,
                    send=self._send,
                    record=self.journal.transaction,
                    started_locally=self._started_locally,
                )
                self.stations[info.controller_id] = station
                self._tasks.create_task(
                    station.run_commands(), name=f"{info.controller_id}-commands"
                )
        await self._subscribe_all()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.registry_refresh_s)
            try:
                await self.refresh()
            except psycopg.Error as exc:
                log.warning("registry: could not re-read it (%s); keeping the last", exc)

    # --- a resident's card -----------------------------------------------------------------
    def _started_locally(self, station: Station, transaction: Transaction) -> None:
        """A station started a transaction for a card (not for our remote start): record a
        charge billed to the card's client, as a partner's start is recorded."""
        self._local_starts.put_nowait((station, transaction))

    async def _local_starts_forever(self) -> None:
        delays = mqtt.backoff(first=0.5, cap=10.0)
        while True:
            station, transaction = await self._local_starts.get()
            while True:
                try:
                    async with await psycopg.AsyncConnection.connect(self.url) as conn:
                        await self._record_local_start(conn, station, transaction)
                    break
                except psycopg.OperationalError as exc:
                    log.warning("%s: recording a card's charge: %s; retrying", station.cid, exc)
                    await asyncio.sleep(next(delays))

    async def _record_local_start(
        self, conn: psycopg.AsyncConnection[Any], station: Station, t: Transaction
    ) -> None:
        client_id = self.snapshot.tags.get(t.id_tag or "")
        connector = station.info.by_outlet(t.outlet)
        if client_id is None or connector is None:
            station.release_frames()
            return  # a tag removed since it was accepted: the transaction is logged
        partner_charge_id = f"rfid-{station.cid}-{t.transaction_id}"[:64]
        charge_id = charges.internal_id(client_id, partner_charge_id)
        now = self.settings.now()
        end_at = now + LOCAL_CHARGE_S
        try:
            async with conn.transaction():
                recorded = await command_records.record_start(
                    conn,
                    outlet_id=connector.outlet_id,
                    charge_id=charge_id,
                    partner_charge_id=partner_charge_id,
                    client_id=client_id,
                    end_at=end_at,
                    issued_at=now,
                    issued_by=f"rfid:{t.id_tag}",
                    request_sha256=hashlib.sha256(partner_charge_id.encode()).digest(),
                )
            want = await recorded.desired()
        except psycopg.errors.UniqueViolation:
            station.release_frames()
            log.warning(
                "%s: outlet %d already has a charge; the card's is not billed",
                station.cid,
                t.outlet,
            )
            return
        if want is None:
            station.release_frames()
            log.warning(
                "%s: the card's charge on %s was not recorded (outlet out of service, or the"
                " station offline in the cloud)",
                station.cid,
                connector.outlet_id,
            )
            return
        station.local_charges.add(charge_id)
        log.info(
            "%s: card %s started charge %s for %s",
            station.cid,
            t.id_tag,
            partner_charge_id,
            client_id,
        )
        self._send(self.topics.desired(want.controller_id, want.outlet), encode(want), True)

    # --- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            await self.refresh()
            tasks.create_task(self.journal.run(self.url, self.settings.frame_retention_days))
            tasks.create_task(self._mqtt_forever(), name="ocpp-mqtt")
            tasks.create_task(self._publish_forever(), name="ocpp-publish")
            tasks.create_task(self._tick_forever(), name="ocpp-tick")
            tasks.create_task(self._refresh_forever(), name="ocpp-registry")
            tasks.create_task(self._local_starts_forever(), name="ocpp-cards")
            await self._serve()

    def close(self) -> None:
        for station in self.stations.values():
            station.close()

    async def _serve(self) -> None:
        # The raw frame log is where frames go: the ocpp package's line per frame is noise.
        logging.getLogger("ocpp").setLevel(logging.WARNING)
        # A port probe (a load balancer's TCP check) is not an error.
        logging.getLogger("websockets.server").addFilter(_NoProbes())
        host, _, port = self.settings.ocpp_bind.rpartition(":")
        async with serve(
            self._connection,
            host,
            int(port),
            subprotocols=["ocpp2.0.1", "ocpp1.6"],  # type: ignore[list-item]
            select_subprotocol=self._subprotocol,
            process_request=self._admit,
            ssl=self._tls(),
            max_size=self.settings.max_frame_bytes,
            compression=None,
            ping_interval=None,  # presence is the station's heartbeat, not our pings
        ) as server:
            sockets = list(server.sockets)
            self.port = sockets[0].getsockname()[1] if sockets else None
            scheme = "wss" if self._tls() else "ws"
            log.info(
                "OCPP endpoint on %s://%s:%s%s{station_id}", scheme, host, self.port, PATH_PREFIX
            )
            self.serving.set()
            await asyncio.Future()

    def _tls(self) -> ssl.SSLContext | None:
        s = self.settings
        if s.ocpp_tls_cert_file is None or s.ocpp_tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(s.ocpp_tls_cert_file, s.ocpp_tls_key_file)
        if s.ocpp_client_ca_file is not None:
            context.load_verify_locations(s.ocpp_client_ca_file)
            context.verify_mode = ssl.CERT_OPTIONAL  # profile 2 stations bring no certificate
        return context

    # --- the upgrade -----------------------------------------------------------------------
    def _station_of(self, path: str) -> StationInfo | None:
        if not path.startswith(PATH_PREFIX):
            return None
        return self.snapshot.stations.get(unquote(path[len(PATH_PREFIX) :].partition("?")[0]))

    def _subprotocol(self, connection: ServerConnection, offered: Any) -> Any:
        info = self._station_of(connection.request.path) if connection.request else None
        wanted = f"ocpp{info.ocpp_version}" if info else None
        return wanted if wanted in offered else None

    async def _admit(self, connection: ServerConnection, request: Request) -> Response | None:
        info = self._station_of(request.path)
        if info is None:
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "no such station", request.path)
        offered = [
            p.strip()
            for header in request.headers.get_all("Sec-WebSocket-Protocol")
            for p in header.split(",")
        ]
        wanted = f"ocpp{info.ocpp_version}"
        if wanted not in offered:
            return self._refuse(
                connection,
                HTTPStatus.BAD_REQUEST,
                f"this station is registered for OCPP {info.ocpp_version}: offer {wanted}",
                info.station_id,
            )
        secret = self.snapshot.secrets.get(info.controller_id)
        if secret is None or secret.revoked:
            return self._refuse(
                connection, HTTPStatus.UNAUTHORIZED, "no credential", info.station_id
            )
        cert = _peer_certificate(connection)
        if cert is not None:
            der, cn = cert
            if cn != info.controller_id or hashlib.sha256(der).digest() != secret.cert_sha256:
                return self._refuse(
                    connection,
                    HTTPStatus.FORBIDDEN,
                    "not this station's certificate",
                    info.station_id,
                )
            return None
        login = _basic(request.headers.get("Authorization"))
        if login is None or login[0] != info.station_id:
            return self._refuse(
                connection, HTTPStatus.UNAUTHORIZED, "no credentials", info.station_id
            )
        if not await self._passwords.check(info.controller_id, secret.argon2, login[1]):
            return self._refuse(
                connection, HTTPStatus.UNAUTHORIZED, "wrong password", info.station_id
            )
        return None

    def _refuse(
        self, connection: ServerConnection, status: HTTPStatus, why: str, who: str
    ) -> Response:
        self.refusals[why] = self.refusals.get(why, 0) + 1
        log.warning("OCPP: refused %s: %s", who[:80], why)
        response = connection.respond(status, f"{why}\n")
        if status is HTTPStatus.UNAUTHORIZED:
            response.headers["WWW-Authenticate"] = 'Basic realm="chargeline", charset="UTF-8"'
        return response

    # --- a connection ----------------------------------------------------------------------
    async def _connection(self, ws: ServerConnection) -> None:
        info = self._station_of(ws.request.path if ws.request else "")
        station = self.stations.get(info.controller_id) if info else None
        if info is None or station is None:
            await ws.close(1008, "unknown station")
            return
        wire = Wire(ws, info.station_id, self.journal)
        kind = V16 if info.ocpp_version == "1.6" else V201
        point = kind(info.station_id, wire, response_timeout=self.settings.call_timeout_s)
        point.station, point.tags, point.journal = station, self, self.journal
        point.heartbeat_s, point.sample_s = (
            self.settings.heartbeat_interval_s,
            self.settings.sample_interval_s,
        )
        old = self.links.get(info.controller_id)
        if old is not None:
            log.info("%s: connected again; closing its older connection", info.station_id)
            await old[1].ws.close(1000, "replaced by a new connection")
        self.links[info.controller_id] = (point, wire)
        station.connected(point)
        log.info(
            "%s (%s): connected, OCPP %s", info.station_id, info.controller_id, info.ocpp_version
        )
        reason = "connection lost"
        try:
            await point.start()
        except ConnectionClosed as exc:
            reason = "disconnected" if exc.rcvd is not None else "connection lost"
        finally:
            if self.links.get(info.controller_id, (None,))[0] is point:
                del self.links[info.controller_id]
                station.disconnected(wire.why or reason)
                log.info("%s: %s", info.station_id, wire.why or reason)

    # --- MQTT ------------------------------------------------------------------------------
    def _send(self, topic: str, payload: bytes, retain: bool) -> None:
        if len(self._outbox) == self._outbox.maxlen:
            log.warning("MQTT outbox full; dropping the oldest message")
        self._outbox.append((topic, payload, retain))
        self._outbox_ready.set()

    async def _publish_forever(self) -> None:
        """Publish the outbox in order, up to ``PUBLISH_WINDOW`` messages awaiting their
        PUBACK at once (one at a time, two thousand stations' presence at a reconnect
        would take seconds); a window that failed is sent again whole."""
        while True:
            await self._outbox_ready.wait()
            client = self._client
            if client is None:
                await asyncio.sleep(0.2)
                continue
            try:
                while self._outbox:
                    window = [
                        self._outbox[i] for i in range(min(PUBLISH_WINDOW, len(self._outbox)))
                    ]
                    await asyncio.gather(
                        *(client.publish(t, p, qos=1, retain=r) for t, p, r in window)
                    )
                    for _ in window:
                        self._outbox.popleft()
                self._outbox_ready.clear()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.5)

    async def _subscribe_all(self) -> None:
        """Three wildcard subscriptions for every station (a session may hold only so many
        filters; the broker delivers the bridge its stations' messages only)."""
        client = self._client
        if client is None or self._subscribed:
            return
        wanted = [
            self.topics.all_controllers(TopicKind.DESIRED),
            self.topics.all_controllers(TopicKind.METER_ACK),
            self.topics.all_controllers(TopicKind.REQUEST),
            self.topics.all_controllers(TopicKind.BUDGET),
        ]
        await client.subscribe([(t, 1) for t in wanted])
        self._subscribed.update(wanted)

    async def _mqtt_forever(self) -> None:
        delays = mqtt.backoff()
        url = self.settings.mqtt
        first = True
        while True:
            try:
                async with mqtt.client(
                    url,
                    identifier=self.settings.client_id,
                    clean_session=True,
                    keepalive=30,
                    max_inflight_messages=PUBLISH_WINDOW,
                ) as client:
                    self._client = client
                    self._subscribed.clear()
                    await self._subscribe_all()
                    self.mqtt_connected = True
                    delays = mqtt.backoff()
                    log.info("MQTT: connected to %r as %s", url, self.settings.client_id)
                    for cid, station in self.stations.items():
                        station.link_restarted()
                        if cid in self.links:
                            station.connected(self.links[cid][0])
                        elif first:
                            station.disconnected("bridge started")
                    first = False
                    self._outbox_ready.set()
                    async for message in client.messages:
                        self._dispatch(message.topic.value, message.payload)
            except aiomqtt.MqttError as exc:
                self._client = None
                self.mqtt_connected = False
                await mqtt.link_down(exc, url, delays, log)

    def _dispatch(self, topic: str, payload: Any) -> None:
        parsed = self.topics.parse(topic)
        station = self.stations.get(parsed.controller_id) if parsed else None
        if parsed is None or station is None or not isinstance(payload, bytes):
            return
        try:
            if parsed.kind is TopicKind.DESIRED and parsed.outlet is not None:
                station.on_desired(parsed.outlet, payload)
            elif parsed.kind is TopicKind.METER_ACK:
                station.on_meter_ack(payload)
            elif parsed.kind is TopicKind.REQUEST:
                station.on_status_request(payload)
            elif parsed.kind is TopicKind.BUDGET:
                station.on_budget(payload)
        except Exception:
            log.exception("%s: handling a message on %s failed", station.cid, topic[:200])

    # --- time ------------------------------------------------------------------------------
    async def _tick_forever(self) -> None:
        last_resend = time.monotonic()
        silent_after = self.settings.heartbeat_interval_s * self.settings.missed_heartbeats
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            resend = now - last_resend >= self.settings.ack_timeout_s / 2
            for cid, station in list(self.stations.items()):
                try:
                    station.tick()
                    if resend:
                        station.send_pending(older_than=now - self.settings.ack_timeout_s)
                except Exception:
                    log.exception("%s: tick failed", cid)
                link = self.links.get(cid)
                if (
                    link is not None
                    and now - link[1].heard > silent_after / self.settings.time_scale
                ):
                    link[1].why = f"silent for {silent_after:.0f} s"
                    self._tasks.create_task(link[1].ws.close(1000, "missed heartbeats"))
            if resend:
                last_resend = now


class _NoProbes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "opening handshake failed"


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None


def _peer_certificate(connection: ServerConnection) -> tuple[bytes, str | None] | None:
    transport = connection.transport
    ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
    if ssl_object is None:
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        return None
    subject = dict(x[0] for x in ssl_object.getpeercert().get("subject", ()))
    return der, subject.get("commonName")

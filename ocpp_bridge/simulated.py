"""A simulated OCPP charging station (1.6J or 2.0.1), on the ``ocpp`` package's charge
point side: the demo's wallbox and fast charger, and the tests' and benchmark's stations.

It behaves as a station from the field does: boots, reports each connector's status,
sends a Heartbeat at the interval it was given, accepts remote starts and stops (or, as
told, rejects or ignores them), starts and ends transactions with its meter register,
sends meter values at the interval the central system configured, lets a resident start
with an RFID card (Authorize first), and queues transaction messages and meter values
while its connection is down, sending them in order once it is back.

Its clock is the installation's (``clock()``: epoch seconds, perhaps accelerated); the
intervals it was given are in that clock's seconds, slept as ``seconds / time_scale``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import logging
import ssl
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as Cp16
from ocpp.v16 import call as c16
from ocpp.v16 import call_result as r16
from ocpp.v16.enums import Action as A16
from ocpp.v201 import ChargePoint as Cp201
from ocpp.v201 import call as c201
from ocpp.v201 import call_result as r201
from ocpp.v201.enums import Action as A201
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

log = logging.getLogger(__name__)


@dataclass
class Car:
    """What a car draws: ``current_a`` until it has taken ``need_wh``."""

    current_a: float = 16.0
    need_wh: float = 40_000.0
    voltage_v: float = 200.0
    soc_percent: float | None = None


@dataclass
class Plug:
    connector: int
    evse: int = 1
    register_wh: float = 1_000.0
    car: Car | None = None
    transaction: str | None = None
    id_tag: str | None = None
    drawn_wh: float = 0.0
    seq: int = 0

    def current(self) -> float:
        if self.transaction is None or self.car is None or self.drawn_wh >= self.car.need_wh:
            return 0.0
        return self.car.current_a


@dataclass
class Behaviour:
    """How the station answers remote starts: ``accept``, ``reject`` or ``ignore`` (no
    answer at all, as a hung charger)."""

    remote_start: str = "accept"
    #: A hung charger: its socket stays open, and it sends nothing (no heartbeat either).
    silent: bool = False


def iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@dataclass
class SimulatedStation:
    url: str  # ws://host:port/ocpp
    station_id: str
    password: str | None
    version: str  # "1.6" or "2.0.1"
    plugs: list[Plug]
    clock: Callable[[], float]
    time_scale: float = 1.0
    behaviour: Behaviour = field(default_factory=Behaviour)
    vendor: str = "chargeline-sim"
    model: str = "sim"
    heartbeat_s: float = 60.0
    sample_s: float = 60.0
    #: Messages waiting for the connection (transaction messages and meter values), in
    #: order, each with the future of its answer.
    queued: deque[tuple[Any, asyncio.Future[Any]]] = field(default_factory=deque)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    booted: asyncio.Event = field(default_factory=asyncio.Event)
    refused: int | None = None  # the HTTP status of the last refused upgrade
    away_until: float = 0.0  # monotonic: no reconnecting before (``drop``)
    #: wss:// (security profiles 2 and 3): the CA to trust, and for 3 the station's certificate.
    tls: ssl.SSLContext | None = None
    #: The station-wide limit of the last charging profile it accepted (None: none), and
    #: every limit it was given, in order.
    limit_a: float | None = None
    limits: list[float] = field(default_factory=list)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _point: Any = None
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def draw(self, plug: Plug) -> float:
        """What a plug's car draws: its own current, within an equal part of the station's
        limit (a charging profile); below 6 A a car does not charge."""
        wanted = plug.current()
        if self.limit_a is None or wanted <= 0:
            return wanted
        sharing = sum(1 for p in self.plugs if p.current() > 0)
        share = self.limit_a / max(1, sharing)
        return min(wanted, share) if share >= 6.0 else 0.0

    def limited(self, amps: float) -> None:
        self.limit_a = amps
        self.limits.append(amps)

    # --- running ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Connect, and stay connected (reconnecting after a drop) until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._meter_forever())
            tasks.create_task(self._send_forever())
            while True:
                with contextlib.suppress(OSError, ConnectionClosed, TimeoutError):
                    await self.session()
                await asyncio.sleep(max(0.3, self.away_until - time.monotonic()))

    async def session(self) -> None:
        """One connection, until it drops."""
        headers = {}
        if self.password is not None:
            login = base64.b64encode(f"{self.station_id}:{self.password}".encode()).decode()
            headers["Authorization"] = f"Basic {login}"
        try:
            ws = await connect(
                f"{self.url}/{self.station_id}",
                subprotocols=[f"ocpp{self.version}"],  # type: ignore[list-item]
                additional_headers=headers,
                open_timeout=10,
                ssl=self.tls,
            )
        except InvalidStatus as exc:
            self.refused = exc.response.status_code
            raise OSError(f"refused: {exc.response.status_code}") from None
        kind = _Station16 if self.version == "1.6" else _Station201
        point = kind(self.station_id, ws, response_timeout=10)
        point.sim = self
        self._point = point
        reader = asyncio.create_task(point.start())
        heartbeat: asyncio.Task[None] | None = None
        try:
            await self._boot(point)
            self.connected.set()
            self._wake.set()
            heartbeat = asyncio.create_task(self._heartbeat_forever(point))
            await reader  # until the connection drops (ConnectionClosed)
        finally:
            self.connected.clear()
            self._point = None
            for task in (reader, heartbeat):
                if task is not None:
                    task.cancel()
            await ws.close()

    async def _boot(self, point: Any) -> None:
        if self.version == "1.6":
            answer = await point.call(
                c16.BootNotification(charge_point_vendor=self.vendor, charge_point_model=self.model)
            )
        else:
            answer = await point.call(
                c201.BootNotification(
                    charging_station={"vendor_name": self.vendor, "model": self.model},
                    reason="PowerUp",
                )
            )
        self.heartbeat_s = float(answer.interval)
        self.booted.set()
        for plug in self.plugs:
            status = "Charging" if plug.transaction else "Available"
            await self._status(point, plug, status)

    async def _status(self, point: Any, plug: Plug, status: str) -> None:
        if self.version == "1.6":
            await point.call(
                c16.StatusNotification(
                    connector_id=plug.connector, error_code="NoError", status=status
                )
            )
        else:
            status = {"Charging": "Occupied"}.get(status, status)
            await point.call(
                c201.StatusNotification(
                    timestamp=iso(self.clock()),
                    connector_status=status,
                    evse_id=plug.evse,
                    connector_id=plug.connector,
                )
            )

    async def _heartbeat_forever(self, point: Any) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s / self.time_scale)
            if self.behaviour.silent:
                continue
            await point.call(c16.Heartbeat() if self.version == "1.6" else c201.Heartbeat())

    async def drop(self, for_s: float) -> None:
        """The network goes away for ``for_s`` real seconds (no close handshake): the
        station keeps metering and queues what it would have sent."""
        self.away_until = time.monotonic() + for_s
        if self._point is not None:
            self._point._connection.transport.abort()

    async def send_raw(self, text: str) -> None:
        """Put any text on the wire (a misbehaving charger, for tests)."""
        if self._point is None:
            raise ConnectionError(f"{self.station_id} is not connected")
        await self._point._connection.send(text)

    async def call(self, payload: Any) -> Any:
        """One call now, its CALLERROR raised (for tests of what the CSMS refuses)."""
        if self._point is None:
            raise ConnectionError(f"{self.station_id} is not connected")
        return await self._point.call(payload, suppress=False)

    # --- messages that must not be lost ----------------------------------------------------
    def post(self, payload: Any) -> asyncio.Future[Any]:
        """Queue a message for the connection, in order; the future of its answer."""
        answered: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.queued.append((payload, answered))
        self._wake.set()
        return answered

    async def send(self, payload: Any) -> Any:
        """``post``, and its answer if it is sent within 15 s, else None (it stays queued
        until the connection is back)."""
        answered = self.post(payload)
        try:
            return await asyncio.wait_for(asyncio.shield(answered), 15)
        except TimeoutError:
            return None

    async def _send_forever(self) -> None:
        """Send the queue's head whenever connected; on a failure it stays at the head."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.queued and self._point is not None and not self.behaviour.silent:
                payload, answered = self.queued[0]
                try:
                    answer = await self._point.call(payload)
                except (ConnectionClosed, TimeoutError):
                    break
                self.queued.popleft()
                if not answered.done():
                    answered.set_result(answer)

    # --- the meter -------------------------------------------------------------------------
    async def _meter_forever(self) -> None:
        last = self.clock()
        next_sample = (int(last // self.sample_s) + 1) * self.sample_s
        while True:
            await asyncio.sleep(max(0.0, (next_sample - self.clock()) / self.time_scale))
            now = self.clock()
            for plug in self.plugs:
                gained = (
                    self.draw(plug) * (plug.car.voltage_v if plug.car else 0) * (now - last) / 3600
                )
                plug.register_wh += gained
                plug.drawn_wh += gained
            last = now
            for plug in self.plugs:
                self.post(self._meter_values(plug, now))
            next_sample += self.sample_s

    def meter_value(
        self, plug: Plug, at: float, context: str = "Sample.Periodic"
    ) -> dict[str, Any]:
        car = plug.car or Car(current_a=0.0)
        current = self.draw(plug)
        values: list[dict[str, Any]]
        if self.version == "1.6":
            values = [
                {
                    "value": f"{plug.register_wh:.1f}",
                    "measurand": "Energy.Active.Import.Register",
                    "unit": "Wh",
                    "context": context,
                },
                {
                    "value": f"{current:.2f}",
                    "measurand": "Current.Import",
                    "unit": "A",
                    "context": context,
                },
                {
                    "value": f"{car.voltage_v:.1f}",
                    "measurand": "Voltage",
                    "unit": "V",
                    "context": context,
                },
            ]
            return {"timestamp": iso(at), "sampledValue": values}
        values = [
            {
                "value": round(plug.register_wh / 1000, 4),
                "measurand": "Energy.Active.Import.Register",
                "unitOfMeasure": {"unit": "kWh"},
                "context": context,
            },
            {"value": round(current, 2), "measurand": "Current.Import", "context": context},
            {"value": car.voltage_v, "measurand": "Voltage", "context": context},
            {
                "value": round(current * car.voltage_v, 1),
                "measurand": "Power.Active.Import",
                "context": context,
            },
        ]
        if car.soc_percent is not None:
            values.append({"value": car.soc_percent, "measurand": "SoC", "context": context})
        return {"timestamp": iso(at), "sampledValue": values}

    def _meter_values(self, plug: Plug, at: float) -> Any:
        sample = self.meter_value(plug, at)
        if self.version == "1.6":
            return c16.MeterValues(
                connector_id=plug.connector,
                meter_value=[sample],
                transaction_id=int(plug.transaction) if plug.transaction else None,
            )
        if plug.transaction is not None:
            plug.seq += 1
            return c201.TransactionEvent(
                event_type="Updated",
                timestamp=sample["timestamp"],
                trigger_reason="MeterValuePeriodic",
                seq_no=plug.seq,
                transaction_info={"transaction_id": plug.transaction},
                evse={"id": plug.evse, "connector_id": plug.connector},
                meter_value=[sample],
                offline=self._point is None or None,
            )
        return c201.MeterValues(evse_id=plug.evse, meter_value=[sample])

    # --- transactions ----------------------------------------------------------------------
    def plug(self, *, connector: int = 1, evse: int = 1) -> Plug:
        return next(p for p in self.plugs if p.connector == connector and p.evse == evse)

    async def begin(self, plug: Plug, id_tag: str, remote_id: int | None = None) -> bool:
        """Start a transaction on ``plug`` for ``id_tag``; False if the CSMS refused it."""
        at = self.clock()
        if plug.car is None:
            plug.car = Car()
        plug.drawn_wh = 0.0
        if self.version == "1.6":
            answer = await self.send(
                c16.StartTransaction(
                    connector_id=plug.connector,
                    id_tag=id_tag,
                    meter_start=int(plug.register_wh),
                    timestamp=iso(at),
                )
            )
            if answer is not None and answer.id_tag_info["status"] != "Accepted":
                return False
            plug.transaction = str(answer.transaction_id) if answer is not None else None
        else:
            plug.transaction = uuid.uuid4().hex[:16]
            plug.seq = 0
            info: dict[str, Any] = {"transaction_id": plug.transaction}
            if remote_id is not None:
                info["remote_start_id"] = remote_id
            answer = await self.send(
                c201.TransactionEvent(
                    event_type="Started",
                    timestamp=iso(at),
                    trigger_reason="RemoteStart" if remote_id is not None else "Authorized",
                    seq_no=plug.seq,
                    transaction_info=info,
                    evse={"id": plug.evse, "connector_id": plug.connector},
                    id_token={
                        "id_token": id_tag,
                        "type": "Central" if remote_id is not None else "ISO14443",
                    },
                    meter_value=[self.meter_value(plug, at, "Transaction.Begin")],
                    offline=self._point is None or None,
                )
            )
            if (
                answer is not None
                and answer.id_token_info
                and answer.id_token_info["status"] != "Accepted"
            ):
                plug.transaction = None
                return False
        plug.id_tag = id_tag
        return True

    async def end(self, plug: Plug, reason: str = "Local") -> None:
        if plug.transaction is None:
            return
        at = self.clock()
        if self.version == "1.6":
            await self.send(
                c16.StopTransaction(
                    meter_stop=int(plug.register_wh),
                    timestamp=iso(at),
                    transaction_id=int(plug.transaction),
                    reason=reason,
                )
            )
        else:
            plug.seq += 1
            await self.send(
                c201.TransactionEvent(
                    event_type="Ended",
                    timestamp=iso(at),
                    trigger_reason="RemoteStop" if reason == "Remote" else "StopAuthorized",
                    seq_no=plug.seq,
                    transaction_info={"transaction_id": plug.transaction, "stopped_reason": reason},
                    evse={"id": plug.evse, "connector_id": plug.connector},
                    meter_value=[self.meter_value(plug, at, "Transaction.End")],
                    offline=self._point is None or None,
                )
            )
        plug.transaction = None

    async def swipe(self, id_tag: str, *, connector: int = 1, evse: int = 1) -> bool:
        """A resident holds a card to the reader: Authorize, then start if accepted."""
        plug = self.plug(connector=connector, evse=evse)
        if self.version == "1.6":
            answer = await self.send(c16.Authorize(id_tag=id_tag))
            status = answer.id_tag_info["status"] if answer is not None else "Accepted"
        else:
            answer = await self.send(
                c201.Authorize(id_token={"id_token": id_tag, "type": "ISO14443"})
            )
            status = answer.id_token_info["status"] if answer is not None else "Accepted"
        if status != "Accepted":
            return False
        return await self.begin(plug, id_tag)


class _Ignoring:
    """A hung charger: remote starts are read and never answered (the rest still is)."""

    sim: SimulatedStation

    async def route_message(self, raw_msg: str) -> None:
        if self.sim.behaviour.remote_start == "ignore" and any(c in raw_msg for c in _START_CALLS):
            return
        await super().route_message(raw_msg)  # type: ignore[misc]


_START_CALLS = ('"RemoteStartTransaction"', '"RequestStartTransaction"')


class _Station16(_Ignoring, Cp16):  # type: ignore[misc]
    sim: SimulatedStation

    @on(A16.remote_start_transaction)
    async def on_remote_start(self, id_tag: str, connector_id: int | None = None, **_: Any) -> Any:
        behaviour = self.sim.behaviour.remote_start
        return r16.RemoteStartTransaction(
            status="Accepted" if behaviour == "accept" else "Rejected"
        )

    @after(A16.remote_start_transaction)
    async def started(self, id_tag: str, connector_id: int | None = None, **_: Any) -> None:
        if self.sim.behaviour.remote_start == "accept":
            await self.sim.begin(self.sim.plug(connector=connector_id or 1), id_tag)

    @on(A16.remote_stop_transaction)
    def on_remote_stop(self, transaction_id: int) -> Any:
        known = any(p.transaction == str(transaction_id) for p in self.sim.plugs)
        return r16.RemoteStopTransaction(status="Accepted" if known else "Rejected")

    @after(A16.remote_stop_transaction)
    async def stopped(self, transaction_id: int) -> None:
        for plug in self.sim.plugs:
            if plug.transaction == str(transaction_id):
                await self.sim.end(plug, "Remote")

    @on(A16.set_charging_profile)
    def on_set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any]
    ) -> Any:
        periods = cs_charging_profiles["charging_schedule"]["charging_schedule_period"]
        self.sim.limited(float(periods[0]["limit"]))
        return r16.SetChargingProfile(status="Accepted")

    @on(A16.change_configuration)
    def on_change_configuration(self, key: str, value: str) -> Any:
        if key == "MeterValueSampleInterval":
            self.sim.sample_s = float(value)
        return r16.ChangeConfiguration(status="Accepted")


class _Station201(_Ignoring, Cp201):  # type: ignore[misc]
    sim: SimulatedStation

    @on(A201.request_start_transaction)
    async def on_request_start(
        self, id_token: dict[str, Any], remote_start_id: int, **_: Any
    ) -> Any:
        behaviour = self.sim.behaviour.remote_start
        return r201.RequestStartTransaction(
            status="Accepted" if behaviour == "accept" else "Rejected"
        )

    @after(A201.request_start_transaction)
    async def started(
        self, id_token: dict[str, Any], remote_start_id: int, evse_id: int | None = None, **_: Any
    ) -> None:
        if self.sim.behaviour.remote_start == "accept":
            plug = next(p for p in self.sim.plugs if p.evse == (evse_id or 1))
            await self.sim.begin(plug, id_token["id_token"], remote_start_id)

    @on(A201.request_stop_transaction)
    def on_request_stop(self, transaction_id: str, **_: Any) -> Any:
        known = any(p.transaction == transaction_id for p in self.sim.plugs)
        return r201.RequestStopTransaction(status="Accepted" if known else "Rejected")

    @after(A201.request_stop_transaction)
    async def stopped(self, transaction_id: str, **_: Any) -> None:
        for plug in self.sim.plugs:
            if plug.transaction == transaction_id:
                await self.sim.end(plug, "Remote")

    @on(A201.set_charging_profile)
    def on_set_charging_profile(
        self, evse_id: int, charging_profile: dict[str, Any], **_: Any
    ) -> Any:
        periods = charging_profile["charging_schedule"][0]["charging_schedule_period"]
        self.sim.limited(float(periods[0]["limit"]))
        return r201.SetChargingProfile(status="Accepted")

    @on(A201.set_variables)
    def on_set_variables(self, set_variable_data: list[dict[str, Any]], **_: Any) -> Any:
        results = []
        for item in set_variable_data:
            if item["variable"]["name"] == "TxUpdatedInterval":
                self.sim.sample_s = float(item["attribute_value"])
            results.append(
                {
                    "attribute_status": "Accepted",
                    "component": item["component"],
                    "variable": item["variable"],
                }
            )
        return r201.SetVariables(set_variable_result=results)

"""The OCPP side of one connection: 1.6J and 2.0.1 message handlers on the ``ocpp``
package's ``ChargePoint`` (which validates every message against the OCPP JSON schemas and
routes it), and the calls the bridge makes (``Link``).

The package handles one connection's messages strictly in order, and our own calls'
answers arrive through the same loop: a slow handler would hold back the answer to a
RemoteStart. So handlers only translate and hand facts to the ``Station`` (no database,
no MQTT, no waiting); what must be written is queued for the bridge's writer (``Journal``).
No handler is named ``start``: that would replace ``ChargePoint.start``.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any, Protocol

from ocpp.exceptions import OCPPError
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201

from ocpp_bridge import readings
from ocpp_bridge.station import CallFailed, Connector, Station, Transaction, transaction_id_16

log = logging.getLogger(__name__)


class Journal(Protocol):
    def boot(
        self, station_id: str, vendor: str, model: str, serial: str | None, firmware: str | None
    ) -> None: ...


class Tags(Protocol):
    def valid(self, id_tag: str) -> bool: ...


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Common:
    """What both versions share: the station, the tags, the journal and the settings."""

    station: Station
    tags: Tags
    journal: Journal
    heartbeat_s: int
    sample_s: int

    def _accepts(self, id_tag: str | None) -> bool:
        return bool(id_tag) and (id_tag in self.station.remote_tags or self.tags.valid(str(id_tag)))

    async def _call(self, payload: Any) -> Any:
        """One call to the station: its answer, None for a CALLERROR, ``CallFailed`` when
        no answer came within the call timeout. (The versions' ``ChargePoint.call``.)"""
        try:
            return await self.call(payload, suppress=False)  # type: ignore[attr-defined]
        except TimeoutError as exc:
            timeout = self._response_timeout  # type: ignore[attr-defined]
            raise CallFailed(f"{type(payload).__name__}: no answer in {timeout} s") from exc
        except OCPPError as exc:
            log.warning(
                "%s: %s answered with a CALLERROR: %s",
                self.station.info.station_id,
                type(payload).__name__,
                exc,
            )
            return None

    def _samples(
        self, outlet: int | None, meter_values: list[dict[str, Any]] | None
    ) -> list[readings.Sample]:
        found = readings.samples(meter_values or [])
        if outlet is not None:
            for sample in found:
                self.station.on_sample(outlet, sample)
        return found


class V16(_Common, ChargePoint16):  # type: ignore[misc]  # the ocpp package has no types
    # --- calls the bridge makes -------------------------------------------------------------
    async def remote_start(self, connector: Connector, id_tag: str, remote_id: int) -> bool:
        answer = await self._call(
            call16.RemoteStartTransaction(id_tag=id_tag, connector_id=connector.connector)
        )
        return answer is not None and answer.status == "Accepted"

    async def remote_stop(self, transaction_id: str) -> bool:
        answer = await self._call(call16.RemoteStopTransaction(transaction_id=int(transaction_id)))
        return answer is not None and answer.status == "Accepted"

    async def set_limit(self, amps: float, profile_id: int) -> bool:
        """The station's ChargePointMaxProfile (connector 0): what it draws in all, from now
        on (an absolute schedule starting at this moment, with one period)."""
        answer = await self._call(
            call16.SetChargingProfile(
                connector_id=0,
                cs_charging_profiles={
                    "chargingProfileId": profile_id,
                    "stackLevel": 0,
                    "chargingProfilePurpose": "ChargePointMaxProfile",
                    "chargingProfileKind": "Absolute",
                    "chargingSchedule": {
                        "startSchedule": _now_iso(),
                        "chargingRateUnit": "A",
                        "chargingSchedulePeriod": [{"startPeriod": 0, "limit": amps}],
                    },
                },
            )
        )
        return answer is not None and answer.status == "Accepted"

    # --- what the station says --------------------------------------------------------------
    @on(Action16.boot_notification)
    def on_boot_notification(
        self, charge_point_vendor: str, charge_point_model: str, **kw: Any
    ) -> Any:
        firmware = kw.get("firmware_version")
        self.station.on_boot(charge_point_vendor, charge_point_model, firmware)
        self.journal.boot(
            self.id,
            charge_point_vendor,
            charge_point_model,
            kw.get("charge_point_serial_number"),
            firmware,
        )
        return result16.BootNotification(
            current_time=_now_iso(), interval=self.heartbeat_s, status="Accepted"
        )

    @after(Action16.boot_notification)
    async def configure(self, **_: Any) -> None:
        """Minute data: aligned meter values every minute, transaction samples as often."""
        wanted = {
            "MeterValueSampleInterval": str(self.sample_s),
            "ClockAlignedDataInterval": str(self.sample_s),
            "MeterValuesSampledData": ",".join(readings.MEASURANDS[:4]),
            "MeterValuesAlignedData": ",".join(readings.MEASURANDS[:4]),
        }
        for key, value in wanted.items():
            try:
                answer = await self._call(call16.ChangeConfiguration(key=key, value=value))
            except CallFailed as exc:
                log.warning("%s: configuring %s: %s", self.id, key, exc)
                return
            if answer is None or answer.status not in ("Accepted", "RebootRequired"):
                log.warning("%s: the station did not accept %s=%s", self.id, key, value)

    @on(Action16.heartbeat)
    def on_heartbeat(self) -> Any:
        return result16.Heartbeat(current_time=_now_iso())

    @on(Action16.status_notification)
    def on_status_notification(
        self, connector_id: int, error_code: str, status: str, **_: Any
    ) -> Any:
        outlet = self.station.info.outlet_of(connector=connector_id)
        if outlet is not None:
            self.station.on_status(outlet, status, None if error_code == "NoError" else error_code)
        return result16.StatusNotification()

    @on(Action16.authorize)
    def on_authorize(self, id_tag: str) -> Any:
        status = "Accepted" if self._accepts(id_tag) else "Invalid"
        return result16.Authorize(id_tag_info={"status": status})

    @on(Action16.start_transaction)
    def on_start_transaction(
        self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **_: Any
    ) -> Any:
        at = readings.timestamp(timestamp) or self.station.clock.now()
        outlet = self.station.info.outlet_of(connector=connector_id)
        tid = transaction_id_16(self.station.cid, connector_id, at, float(meter_start), id_tag)
        accepted = outlet is not None and self._accepts(id_tag)
        if accepted and outlet is not None and self.station.transaction(str(tid)) is None:
            self.station.on_transaction_started(
                Transaction(
                    transaction_id=str(tid),
                    outlet=outlet,
                    started_at=at,
                    meter_start_wh=float(meter_start),
                    id_tag=id_tag,
                    remote=id_tag in self.station.remote_tags,
                )
            )
        status = "Accepted" if accepted else "Invalid"
        return result16.StartTransaction(transaction_id=tid, id_tag_info={"status": status})

    @on(Action16.stop_transaction)
    def on_stop_transaction(
        self, meter_stop: int, timestamp: str, transaction_id: int, **kw: Any
    ) -> Any:
        at = readings.timestamp(timestamp) or self.station.clock.now()
        running = self.station.transaction(str(transaction_id))
        if running is not None:
            self._samples(running.outlet, kw.get("transaction_data"))
        self.station.on_transaction_ended(
            str(transaction_id),
            at=at,
            meter_stop_wh=float(meter_stop),
            reason=kw.get("reason") or "Local",
        )
        return result16.StopTransaction(id_tag_info={"status": "Accepted"})

    @on(Action16.meter_values)
    def on_meter_values(
        self, connector_id: int, meter_value: list[dict[str, Any]], **_: Any
    ) -> Any:
        self._samples(self.station.info.outlet_of(connector=connector_id), meter_value)
        return result16.MeterValues()

    # Notifications a station sends that ask nothing of us: acknowledged (and kept in the
    # raw frame log); a vendor's DataTransfer is answered as no vendor of ours.
    @on(Action16.diagnostics_status_notification)
    def on_diagnostics_status(self, **_: Any) -> Any:
        return result16.DiagnosticsStatusNotification()

    @on(Action16.firmware_status_notification)
    def on_firmware_status(self, **_: Any) -> Any:
        return result16.FirmwareStatusNotification()

    @on(Action16.data_transfer)
    def on_data_transfer(self, **_: Any) -> Any:
        return result16.DataTransfer(status="UnknownVendorId")


class V201(_Common, ChargePoint201):  # type: ignore[misc]
    async def remote_start(self, connector: Connector, id_tag: str, remote_id: int) -> bool:
        answer = await self._call(
            call201.RequestStartTransaction(
                id_token={"id_token": id_tag, "type": "Central"},
                remote_start_id=remote_id % 2**31,
                evse_id=connector.evse,
            )
        )
        return answer is not None and answer.status == "Accepted"

    async def remote_stop(self, transaction_id: str) -> bool:
        answer = await self._call(call201.RequestStopTransaction(transaction_id=transaction_id))
        return answer is not None and answer.status == "Accepted"

    async def set_limit(self, amps: float, profile_id: int) -> bool:
        """The station's ChargingStationMaxProfile (EVSE 0): what it draws in all, from now
        on (an absolute schedule starting at this moment, with one period)."""
        answer = await self._call(
            call201.SetChargingProfile(
                evse_id=0,
                charging_profile={
                    "id": profile_id,
                    "stackLevel": 0,
                    "chargingProfilePurpose": "ChargingStationMaxProfile",
                    "chargingProfileKind": "Absolute",
                    "chargingSchedule": [
                        {
                            "id": profile_id,
                            "startSchedule": _now_iso(),
                            "chargingRateUnit": "A",
                            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": amps}],
                        }
                    ],
                },
            )
        )
        return answer is not None and answer.status == "Accepted"

    @on(Action201.boot_notification)
    def on_boot_notification(self, charging_station: dict[str, Any], reason: str, **_: Any) -> Any:
        vendor = charging_station.get("vendor_name", "")
        model = charging_station.get("model", "")
        firmware = charging_station.get("firmware_version")
        self.station.on_boot(vendor, model, firmware)
        self.journal.boot(self.id, vendor, model, charging_station.get("serial_number"), firmware)
        return result201.BootNotification(
            current_time=_now_iso(), interval=self.heartbeat_s, status="Accepted"
        )

    @after(Action201.boot_notification)
    async def configure(self, **_: Any) -> None:
        """Minute data: aligned and sampled meter values every minute (SetVariables)."""
        variables = [
            ("AlignedDataCtrlr", "Interval", str(self.sample_s)),
            ("SampledDataCtrlr", "TxUpdatedInterval", str(self.sample_s)),
            ("AlignedDataCtrlr", "Measurands", ",".join(readings.MEASURANDS)),
            ("SampledDataCtrlr", "TxUpdatedMeasurands", ",".join(readings.MEASURANDS)),
        ]
        data = [
            {"attribute_value": value, "component": {"name": component}, "variable": {"name": name}}
            for component, name, value in variables
        ]
        try:
            answer = await self._call(call201.SetVariables(set_variable_data=data))
        except CallFailed as exc:
            log.warning("%s: configuring the sample intervals: %s", self.id, exc)
            return
        refused = [
            r["variable"]["name"]
            for r in (answer.set_variable_result if answer is not None else [])
            if r.get("attribute_status") not in ("Accepted", "RebootRequired")
        ]
        if answer is None or refused:
            log.warning("%s: the station did not accept %s", self.id, refused or "SetVariables")

    @on(Action201.heartbeat)
    def on_heartbeat(self) -> Any:
        return result201.Heartbeat(current_time=_now_iso())

    @on(Action201.status_notification)
    def on_status_notification(
        self, timestamp: str, connector_status: str, evse_id: int, connector_id: int, **_: Any
    ) -> Any:
        outlet = self.station.info.outlet_of(evse=evse_id, connector=connector_id)
        if outlet is not None:
            self.station.on_status(outlet, connector_status)
        return result201.StatusNotification()

    @on(Action201.authorize)
    def on_authorize(self, id_token: dict[str, Any], **_: Any) -> Any:
        status = "Accepted" if self._accepts(id_token.get("id_token")) else "Invalid"
        return result201.Authorize(id_token_info={"status": status})

    @on(Action201.transaction_event)
    def on_transaction_event(
        self,
        event_type: str,
        timestamp: str,
        trigger_reason: str,
        seq_no: int,
        transaction_info: dict[str, Any],
        **kw: Any,
    ) -> Any:
        at = readings.timestamp(timestamp) or self.station.clock.now()
        tid = str(transaction_info["transaction_id"])
        token = (kw.get("id_token") or {}).get("id_token")
        evse = kw.get("evse") or {}
        running = self.station.transaction(tid)
        outlet = (
            running.outlet
            if running is not None
            else self.station.info.outlet_of(
                evse=evse.get("id"), connector=evse.get("connector_id")
            )
        )
        accepted = token is None or self._accepts(token)
        found = readings.samples(kw.get("meter_value") or [])
        energy = next((s.energy_wh for s in found if s.energy_wh is not None), None)
        # A transaction starts with its Started event, or with the Updated event that brings
        # its id token (one begun by plugging in, before the card was shown).
        starts = event_type in ("Started", "Updated") and running is None
        if starts and outlet is not None and accepted and token is not None:
            self.station.on_transaction_started(
                Transaction(
                    transaction_id=tid,
                    outlet=outlet,
                    started_at=at,
                    meter_start_wh=energy,
                    id_tag=token,
                    remote=token in self.station.remote_tags,
                )
            )
        if outlet is not None:
            for sample in found:
                self.station.on_sample(outlet, sample)
        if event_type == "Ended":
            last = next((s.energy_wh for s in reversed(found) if s.energy_wh is not None), None)
            self.station.on_transaction_ended(
                tid,
                at=at,
                meter_stop_wh=last,
                reason=transaction_info.get("stopped_reason") or "Local",
            )
        if token is None:
            return result201.TransactionEvent()
        return result201.TransactionEvent(
            id_token_info={"status": "Accepted" if accepted else "Invalid"}
        )

    @on(Action201.notify_event)
    def on_notify_event(self, **_: Any) -> Any:
        return result201.NotifyEvent()

    @on(Action201.notify_report)
    def on_notify_report(self, **_: Any) -> Any:
        return result201.NotifyReport()

    @on(Action201.security_event_notification)
    def on_security_event(self, **_: Any) -> Any:
        return result201.SecurityEventNotification()

    @on(Action201.firmware_status_notification)
    def on_firmware_status(self, **_: Any) -> Any:
        return result201.FirmwareStatusNotification()

    @on(Action201.log_status_notification)
    def on_log_status(self, **_: Any) -> Any:
        return result201.LogStatusNotification()

    @on(Action201.data_transfer)
    def on_data_transfer(self, **_: Any) -> Any:
        return result201.DataTransfer(status="UnknownVendorId")

    @on(Action201.meter_values)
    def on_meter_values(self, evse_id: int, meter_value: list[dict[str, Any]], **_: Any) -> Any:
        self._samples(self.station.info.outlet_of(evse=evse_id), meter_value)
        return result201.MeterValues()

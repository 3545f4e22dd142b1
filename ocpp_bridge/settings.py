"""The OCPP bridge's settings (``chargeline ocpp``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from kernel.settings import CommonSettings


class OcppSettings(CommonSettings):
    ocpp_bind: str = Field(
        default="127.0.0.1:9220",
        description="host:port of the OCPP-J endpoint (stations connect to /ocpp/{station_id})",
    )
    ocpp_client_id: str = Field(
        default="",
        description="MQTT client id; default: the MQTT username (svc_ocpp)",
    )
    ocpp_tls_cert_file: Path | None = Field(
        default=None, description="security profiles 2 and 3: the endpoint's TLS certificate"
    )
    ocpp_tls_key_file: Path | None = Field(default=None, description="its private key")
    ocpp_client_ca_file: Path | None = Field(
        default=None,
        description="security profile 3: the CA of station certificates (chargeline pki);"
        " a station then proves itself by its certificate, whose CN is its controller id",
    )
    call_timeout_s: float = Field(
        default=10.0, gt=0, le=120, description="how long the bridge waits for a station's answer"
    )
    transaction_wait_s: float = Field(
        default=10.0,
        gt=0,
        le=120,
        description="after a start (stop) was accepted, how long the transaction may take to"
        " start (end)",
    )
    heartbeat_interval_s: int = Field(
        default=60, ge=10, le=3600, description="the Heartbeat interval given at boot"
    )
    missed_heartbeats: float = Field(
        default=2.5,
        gt=1,
        description="a station silent for this many heartbeat intervals is disconnected",
    )
    sample_interval_s: int = Field(
        default=60, ge=10, le=900, description="the meter value intervals set at boot"
    )
    start_max_age_s: float = Field(
        default=120.0, gt=0, description="an ON issued longer ago than this is refused"
    )
    ack_timeout_s: float = Field(
        default=30.0, gt=0, description="meter batches unacknowledged this long are resent"
    )
    frame_retention_days: float = Field(
        default=30.0, gt=0, description="the raw OCPP frame log keeps this many days"
    )
    registry_refresh_s: float = Field(
        default=30.0, gt=0, description="how often stations, tags and passwords are re-read"
    )
    max_frame_bytes: int = Field(
        default=64 * 1024, ge=1024, description="WebSocket messages larger than this close it"
    )

    @property
    def client_id(self) -> str:
        return self.ocpp_client_id or self.mqtt.username or "svc_ocpp"

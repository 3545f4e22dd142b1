"""The ingest worker's settings (``chargeline ingest``)."""

from __future__ import annotations

from pydantic import Field

from kernel.settings import CommonSettings


class IngestSettings(CommonSettings):
    ingest_client_id: str | None = Field(
        default=None,
        description="MQTT client id; default: the MQTT username (the broker requires they"
        " match), else chargeline-ingest",
    )

    @property
    def client_id(self) -> str:
        return self.ingest_client_id or self.mqtt.username or "chargeline-ingest"

    flush_max_rows: int = Field(default=20_000, ge=1, description="readings per database write")
    flush_max_delay_s: float = Field(
        default=0.05, gt=0, description="longest a reading waits to be written"
    )
    ack_max_delay_s: float = Field(
        default=1.0,
        ge=0,
        le=10,
        description="acks for committed batches are merged per controller for up to this long",
    )
    max_pending_messages: int = Field(
        default=20_000, ge=10, description="messages held in memory; beyond it reading stops"
    )
    registry_refresh_s: float = Field(default=10.0, gt=0)
    fleet_refresh_s: float = Field(
        default=15.0,
        gt=0,
        description="how often the metrics' fleet figures (controllers online, batches missing)"
        " are read from the database",
    )
    silence_timeout_s: float = Field(
        default=150.0,
        gt=0,
        description="a controller not heard from this long is offline (2.5 minute batches)",
    )
    share_group: str | None = Field(default=None, description="$share group (Mosquitto/EMQX only)")

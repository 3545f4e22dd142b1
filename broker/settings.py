"""The broker's settings (``chargeline broker``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from kernel.settings import CommonSettings


class BrokerSettings(CommonSettings):
    broker_bind: str = Field(
        default="127.0.0.1:1883", description="host:port the broker listens on"
    )
    broker_tls_bind: str | None = Field(
        default=None, description="host:port of the TLS listener (password auth)"
    )
    broker_mtls_bind: str | None = Field(
        default=None, description="host:port of the mutual-TLS listener (client certificates)"
    )
    broker_cert_file: Path | None = Field(default=None, description="the broker's certificate")
    broker_key_file: Path | None = Field(default=None, description="its private key")
    broker_client_ca_file: Path | None = Field(
        default=None, description="the CA whose client certificates the mTLS listener accepts"
    )
    broker_max_packet_bytes: int = Field(
        default=512 * 1024, ge=1024, description="larger MQTT packets close the connection"
    )
    broker_max_connections: int = Field(
        default=10_000,
        ge=1,
        description="connections held at once; more are refused (kept below the file limit)",
    )
    broker_max_connections_per_address: int = Field(
        default=1_000,
        ge=1,
        description="connections from one source address (raise it for controllers behind"
        " one NAT address)",
    )
    broker_connect_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="a connection must send its CONNECT this soon"
    )
    broker_max_subscriptions: int = Field(
        default=100, ge=10, description="topic filters one session may hold"
    )
    broker_allow_anonymous: bool = Field(
        default=False,
        description="development only: no authentication and no topic rules at all",
    )

    @model_validator(mode="after")
    def _check_listeners(self) -> BrokerSettings:
        tls = self.broker_tls_bind or self.broker_mtls_bind
        if tls and (self.broker_cert_file is None or self.broker_key_file is None):
            raise ValueError("TLS listeners need broker_cert_file and broker_key_file")
        if self.broker_mtls_bind and self.broker_client_ca_file is None:
            raise ValueError("the mTLS listener needs broker_client_ca_file")
        return self

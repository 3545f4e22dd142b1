"""Typed settings, read once at start: environment (``CHARGELINE_…``), then an optional TOML file.

Each process has its own settings class; they share ``CommonSettings``. A bad value stops
the process at start with pydantic's message naming the variable, never later.
"""

from __future__ import annotations

import os
import ssl
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.topics import DEFAULT_ROOT, Topics, is_controller_id

#: The TOML file given with ``--config`` (set by the CLI before settings are built).
CONFIG_FILE: ContextVar[Path | None] = ContextVar("CONFIG_FILE", default=None)

S = TypeVar("S", bound="CommonSettings")


class MqttUrl:
    """``mqtt://user:pass@host:port`` split into what a client needs."""

    def __init__(
        self,
        url: str,
        *,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise ValueError(f"MQTT URL {url!r} must start with mqtt:// or mqtts://")
        if not parts.hostname:
            raise ValueError(f"MQTT URL {url!r} has no host")
        self.tls = parts.scheme == "mqtts"
        self.host: str = parts.hostname
        self.port: int = parts.port or (8883 if self.tls else 1883)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        if (cert_file is None) != (key_file is None):
            raise ValueError("a client certificate needs both mqtt_cert_file and mqtt_key_file")

    def ssl_context(self) -> ssl.SSLContext | None:
        """For mqtts://: verify the broker against ``ca_file`` (else the system's CAs) and
        present the client certificate when one is configured (the mTLS listener)."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file)
        return context

    @staticmethod
    def with_login(url: str, username: str, password: str) -> str:
        """``url`` with ``username:password@`` in it (replacing any there)."""
        parts = urlsplit(url)
        host = parts.netloc.rpartition("@")[2]
        login = f"{quote(username, safe='')}:{quote(password, safe='')}"
        return parts._replace(netloc=f"{login}@{host}").geturl()

    def __repr__(self) -> str:  # never print the password
        user = f"{self.username}@" if self.username else ""
        return f"MqttUrl('{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port}')"


def default_data_dir() -> Path:
    """Where state lives unless CHARGELINE_DATA_DIR says otherwise: the same place from
    any working directory ($XDG_DATA_HOME/chargeline, else ~/.local/share/chargeline)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "chargeline"


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHARGELINE_", extra="ignore")

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="state: edge buffers, the embedded database, keys"
        " (default $XDG_DATA_HOME/chargeline or ~/.local/share/chargeline)",
    )
    database_url: str | None = Field(
        default=None, description="PostgreSQL; unset → embedded server"
    )
    mqtt_url: str = Field(default="mqtt://127.0.0.1:1883", description="mqtt://user:pass@host:port")
    mqtt_ca_file: Path | None = Field(
        default=None, description="mqtts://: the CA that signed the broker's certificate"
    )
    mqtt_cert_file: Path | None = Field(
        default=None, description="client certificate for the broker's mTLS listener"
    )
    mqtt_key_file: Path | None = Field(default=None, description="its private key")
    topic_root: str = Field(default=DEFAULT_ROOT, description="root of every MQTT topic")
    log_level: str = "INFO"
    time_scale: float = Field(
        default=1.0, gt=0, le=3600, description="simulated seconds per real second (demo, tests)"
    )
    time_origin: float | None = Field(
        default=None,
        description="accelerated installations: the epoch from which every process's clock"
        " runs time_scale times faster (unset: the edge alone runs fast)",
    )

    _toml_sections: ClassVar[tuple[str, ...]] = ()

    def now(self) -> float:
        """The installation's clock for times in messages and charges (command issue times,
        end times): real time, or with ``time_origin`` set, ``time_scale`` times faster
        from it, the same in every process."""
        real = time.time()
        if self.time_origin is None:
            return real
        return self.time_origin + (real - self.time_origin) * self.time_scale

    @field_validator("mqtt_url")
    @classmethod
    def _check_mqtt_url(cls, value: str) -> str:
        MqttUrl(value)
        return value

    @field_validator("topic_root")
    @classmethod
    def _check_root(cls, value: str) -> str:
        Topics(value)
        return value

    @property
    def mqtt(self) -> MqttUrl:
        return MqttUrl(
            self.mqtt_url,
            ca_file=self.mqtt_ca_file,
            cert_file=self.mqtt_cert_file,
            key_file=self.mqtt_key_file,
        )

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_root)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        # systemd's LoadCredential= puts secrets in files named after their settings
        # (e.g. chargeline_database_url); they rank below the environment.
        credentials = os.environ.get("CREDENTIALS_DIRECTORY")
        if credentials:
            sources.append(SecretsSettingsSource(settings_cls, secrets_dir=credentials))
        path = CONFIG_FILE.get()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)


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


class EdgeSettings(CommonSettings):
    controller_id: str = Field(default="", description="this controller's id (also its MQTT user)")
    outlets: int = Field(default=8, ge=1, le=8)
    sample_interval_s: float = Field(
        default=1.0, gt=0, description="simulated seconds between samples"
    )
    max_frames_per_message: int = Field(default=60, ge=1, le=240)
    ack_timeout_s: float = Field(
        default=30.0, gt=0, description="real seconds before unacked batches are resent"
    )
    buffer_max_frames: int = Field(
        default=7 * 24 * 60, ge=10, description="frames kept while unacked"
    )
    start_max_age_s: float = Field(
        default=120.0, gt=0, description="an ON issued longer ago than this is refused"
    )
    overcurrent_a: float = Field(default=20.0, gt=0, description="trip above this current…")
    overcurrent_s: float = Field(default=5.0, ge=0, description="…sustained this long")
    current_event_levels_a: list[float] = Field(
        default=[1.0, 2.0, 4.0, 6.0, 10.0],
        description="report at once when an outlet's current rises through one of these",
    )
    firmware: str = "chargeline-edge/0.1"
    sim_seed: int | None = None
    sim_cars: str = Field(
        default="",
        description="simulation: cars plugged in at start, 'outlet:need_wh:max_a,…'",
    )
    sim_failed_breakers: str = Field(
        default="", description="simulation: outlets whose breaker ignores commands, '3,5'"
    )
    sim_clock_skew_s: float = Field(default=0.0, description="simulation: edge clock error")
    sim_autoplay: bool = Field(
        default=False, description="simulated residents switch breakers (demo)"
    )
    minutes: int | None = Field(
        default=None, ge=1, description="stop after this many frames are acked"
    )

    @field_validator("controller_id")
    @classmethod
    def _check_controller_id(cls, value: str) -> str:
        if value and not is_controller_id(value):
            raise ValueError(f"{value!r} is not a controller id ([a-z0-9][a-z0-9-]{{0,62}})")
        return value


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
    silence_timeout_s: float = Field(
        default=150.0,
        gt=0,
        description="a controller not heard from this long is offline (2.5 minute batches)",
    )
    share_group: str | None = Field(default=None, description="$share group (Mosquitto/EMQX only)")


class GatewaySettings(CommonSettings):
    auth_bind: str = Field(default="127.0.0.1:8001", description="authorization server host:port")
    api_bind: str = Field(default="127.0.0.1:8000", description="partner API host:port")
    issuer: str = Field(
        default="http://127.0.0.1:8001", description="the authorization server's public URL"
    )
    audience: str = Field(default="chargeline-api", description="the API's token audience")
    jwks_url: str | None = Field(default=None, description="unset: {issuer}/.well-known/jwks.json")
    token_ttl_s: int = Field(default=600, ge=30, le=900, description="access token lifetime")
    token_leeway_s: int = Field(default=30, ge=0, le=60, description="clock leeway on tokens")
    token_max_lifetime_s: int = Field(
        default=900,
        ge=30,
        le=3600,
        description="the API refuses tokens whose exp - iat exceeds this",
    )
    token_rate_per_s: float = Field(default=20.0, gt=0, description="token requests per client")
    token_burst: int = Field(default=40, ge=1)
    token_source_rate_per_s: float = Field(
        default=100.0, gt=0, description="token requests per source address (any client)"
    )
    token_source_burst: int = Field(default=200, ge=1)
    api_rate_per_s: float = Field(default=200.0, gt=0, description="API requests per client")
    api_burst: int = Field(default=400, ge=1)
    start_wait_s: float = Field(
        default=3.0, ge=0, le=30, description="how long a start waits for the breaker"
    )
    start_timeout_s: float = Field(
        default=60.0,
        ge=1,
        description="a start unanswered this long fails, and an OFF command cancels it",
    )
    max_body_bytes: int = Field(
        default=16 * 1024, ge=256, description="request bodies larger than this get 413"
    )
    max_charge_s: float = Field(
        default=24 * 3600, gt=0, description="default and longest charge (end_at - now)"
    )
    http_request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="a request must arrive in full (headers and body) this soon",
    )
    http_max_connections: int = Field(
        default=4096, ge=1, description="connections held at once, per server"
    )
    http_max_connections_per_address: int = Field(
        default=256,
        ge=1,
        description="connections from one source address, per server (behind a reverse"
        " proxy, every connection comes from the proxy: raise it)",
    )
    http_trusted_proxies: str = Field(
        default="127.0.0.1",
        description="addresses whose X-Forwarded-For names the real client (comma-separated;"
        " empty: none)",
    )
    gateway_deliver_webhooks: bool = Field(
        default=True,
        description="the gateway also delivers webhooks; false: `chargeline webhooks` does,"
        " with its own database role (the gateway's then cannot read webhook secrets)",
    )
    webhook_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="a webhook post unanswered this long failed"
    )
    webhook_concurrency: int = Field(
        default=4, ge=1, le=64, description="webhook posts in flight per client"
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="allow webhook URLs on loopback, private or link-local addresses"
        " (a closed network or a test; never for partners on the internet)",
    )
    status_timeout_s: float = Field(
        default=30.0,
        ge=1,
        description="a status request the edge has not answered this long is answered"
        " from the outlet's last stored reading",
    )

    @property
    def jwks(self) -> str:
        return self.jwks_url or f"{self.issuer.rstrip('/')}/.well-known/jwks.json"


def load(cls: type[S], **overrides: Any) -> S:
    """Build settings; keyword overrides (from command-line flags) win over everything."""
    return cls(**{k: v for k, v in overrides.items() if v is not None})


def describe(settings_cls: type[CommonSettings]) -> str:
    """Every setting a process reads, for its ``--help``: the environment variable, the
    default and what it is for (from the model's field descriptions)."""
    lines = ["settings (environment variables win over --config FILE; see deploy/*.example.toml):"]
    for name, field in settings_cls.model_fields.items():
        value = field.get_default(call_default_factory=True)
        default = (
            "unset" if value is None else str(value) if isinstance(value, Path) else repr(value)
        )
        what = f"  {field.description}" if field.description else ""
        lines.append(f"  CHARGELINE_{name.upper():<28} {default}{what}")
    return "\n".join(lines)

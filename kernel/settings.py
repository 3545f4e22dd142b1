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
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import quote, unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SecretsSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from schemas.topics import DEFAULT_ROOT, Topics

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
    ops_bind: str | None = Field(
        default=None,
        description="host:port for this process's /healthz, /readyz and /metrics"
        " (one port per process; unset: not served)",
    )
    log_format: Literal["plain", "json"] = Field(
        default="plain",
        description="plain text, or json: one JSON object per line with the ids it concerns",
    )
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

    @field_validator("ops_bind")
    @classmethod
    def _check_ops_bind(cls, value: str | None) -> str | None:
        if value is None:
            return value
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected host:port, got {value!r}")
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

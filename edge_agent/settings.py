"""An edge controller's settings (``chargeline edge``)."""

from __future__ import annotations

from pydantic import Field, field_validator

from kernel.settings import CommonSettings
from schemas.topics import is_controller_id


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
    outlet_max_a: float = Field(
        default=16.0, gt=0, le=500, description="load management: what a charging outlet draws"
    )
    safe_share_a: float | None = Field(
        default=None,
        ge=0,
        description="load management: the most this controller draws before it has heard a"
        " budget (then the budget's own safe share counts); unset: no limit",
    )
    min_off_s: float = Field(
        default=120.0, ge=0, description="load management: a paused breaker stays open this long"
    )
    load_report_s: float = Field(
        default=5.0, ge=0, description="real seconds between load reports (0: none)"
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

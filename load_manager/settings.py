"""The sites' allocator's settings (``chargeline loads``)."""

from __future__ import annotations

from pydantic import Field

from charging.allocation import Settings as Allocation
from kernel.settings import CommonSettings


class LoadSettings(CommonSettings):
    loads_client_id: str = Field(
        default="", description="MQTT client id; default: the MQTT username (svc_loads)"
    )
    period_s: float = Field(
        default=5.0, gt=0, le=60, description="real seconds between two allocations"
    )
    expiry_periods: float = Field(
        default=2.0,
        gt=1,
        le=10,
        description="a budget expires after this many periods: an edge without news falls"
        " back to its safe share that soon",
    )
    headroom_a: float = Field(
        default=4.0, ge=0, description="kept free under the cap for the building's rises"
    )
    start_reserve_a: float = Field(
        default=4.0,
        ge=0,
        description="a charge starts only with this much more room: the building's rise must"
        " not pause it before its minimum on time",
    )
    min_on_s: float = Field(default=300.0, ge=0, description="a breaker closed stays so this long")
    min_off_s: float = Field(default=120.0, ge=0, description="a breaker opened stays so this long")
    turn_s: float = Field(
        default=900.0, ge=0, description="a charge keeps its place this long before it may yield"
    )
    switches_per_hour: int = Field(
        default=4, ge=2, description="the most an outlet is switched by the allocator in an hour"
    )
    report_stale_s: float = Field(
        default=15.0,
        gt=0,
        description="real seconds without a load report after which a controller counts as"
        " unheard (drawing its safe share)",
    )
    min_station_a: float = Field(
        default=6.0, ge=0, description="the least a station's connector is given (IEC 61851)"
    )
    sites_refresh_s: float = Field(
        default=30.0, gt=0, description="how often sites, controllers and caps are re-read"
    )
    history_hours: float = Field(
        default=48.0, gt=0, description="site load rows kept for the live view and the console"
    )

    @property
    def client_id(self) -> str:
        return self.loads_client_id or self.mqtt.username or "svc_loads"

    def allocation(self) -> Allocation:
        """The allocator's settings, in cloud seconds (the periods are real seconds, which an
        accelerated installation's clock runs ``time_scale`` times faster; the minimum times
        are cloud seconds already)."""
        scale = self.time_scale if self.time_origin is not None else 1.0
        period = self.period_s * scale
        return Allocation(
            period_s=period,
            expiry_s=period * self.expiry_periods,
            headroom_a=self.headroom_a,
            start_reserve_a=self.start_reserve_a,
            min_on_s=self.min_on_s,
            min_off_s=self.min_off_s,
            turn_s=self.turn_s,
            switches_per_hour=self.switches_per_hour,
            min_station_a=self.min_station_a,
            stale_s=max(period * 3, self.report_stale_s * scale),
            ramp_s=max(60.0, period * 2),
        )

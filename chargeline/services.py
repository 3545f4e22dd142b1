"""Starting each process's service from its settings (shared by the CLI and the demo)."""

from __future__ import annotations

import logging

from edge_agent.agent import EdgeAgent
from edge_agent.clock import ScaledClock
from edge_agent.settings import EdgeSettings
from edge_agent.simulated import SimulatedSite
from ingest.settings import IngestSettings
from kernel import logformat, systemd
from load_manager.settings import LoadSettings
from ocpp_bridge.settings import OcppSettings

log = logging.getLogger(__name__)


async def run_ingest(settings: IngestSettings, url: str) -> None:
    from ingest.probe import probe  # psycopg: not on a controller, which runs the edge only
    from ingest.worker import Ingest
    from kernel import ops

    async with (
        Ingest(settings, database_url=url) as ingest,
        ops.served(settings.ops_bind, probe(ingest)),
        systemd.service(),
    ):
        await ingest.run()


async def run_ocpp(settings: OcppSettings, url: str) -> None:
    from kernel import ops
    from ocpp_bridge.bridge import Bridge
    from ocpp_bridge.probe import probe

    bridge = Bridge(settings, url)

    async def serving() -> None:
        await bridge.serving.wait()

    try:
        async with (
            ops.served(settings.ops_bind, probe(bridge)),
            systemd.service(serving),
        ):
            await bridge.run()
    finally:
        bridge.close()


async def run_loads(settings: LoadSettings, url: str) -> None:
    from kernel import ops
    from load_manager.probe import probe
    from load_manager.runner import LoadManager

    manager = LoadManager(settings, url)
    async with ops.served(settings.ops_bind, probe(manager)), systemd.service():
        await manager.run()


def simulated_agent(settings: EdgeSettings, *, arrivals: bool = True) -> EdgeAgent:
    """An edge agent on a ``SimulatedSite`` (its ``meter`` and ``breakers``)."""
    clock = ScaledClock(settings.time_scale, start=settings.now() + settings.sim_clock_skew_s)
    site = SimulatedSite(
        outlets=settings.outlets,
        seed=settings.sim_seed if settings.sim_seed is not None else settings.controller_id,
        autoplay=settings.sim_autoplay,
        arrivals=arrivals,
        start=clock.now(),
    )
    for spec in filter(None, settings.sim_cars.split(",")):
        outlet, need_wh, max_a = spec.split(":")
        site.plug_in(int(outlet), need_wh=float(need_wh), max_current_a=float(max_a))
    for outlet in filter(None, settings.sim_failed_breakers.split(",")):
        site.fail(int(outlet))
    return EdgeAgent(settings, meter=site, breakers=site, clock=clock)


async def run_edge(settings: EdgeSettings) -> None:
    logformat.bind(controller_id=settings.controller_id)  # on every line this process logs
    async with systemd.service():
        await run_agent(simulated_agent(settings))


async def run_agent(agent: EdgeAgent) -> None:
    async with agent:
        await agent.run()

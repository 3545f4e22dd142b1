"""The partner API's background loops, run by the app's lifespan in one ``TaskGroup`` and
awaited before the pools close:

* the MQTT link, which delivers the edge's acknowledgements to the calls waiting for them;
* the time-outs: starts no breaker answered are failed and cancelled with an OFF, and
  overdue status requests are answered from the store;
* the availability feed: outlet.availability webhooks when outlets become (un)available;
* the client standing (disabled, removed, rotated clients), reloaded on every change;
* the webhook deliverer, unless ``chargeline webhooks`` runs it.

A loop that fails unexpectedly is logged with its traceback and started again after a
pause (``supervised``); it never ends silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import aiomqtt
import psycopg

from charging import availability_feed, charges, lifecycle, status
from charging import commands as command_records
from cloud_gateway import repository, standing
from cloud_gateway.context import Gateway
from cloud_gateway.problems import Problem
from kernel import mqtt

log = logging.getLogger(__name__)


def start(tasks: asyncio.TaskGroup, gateway: Gateway) -> list[asyncio.Task[None]]:
    """Every loop the gateway runs, started in ``tasks``."""
    loops: dict[str, Callable[[], Awaitable[None]]] = {
        "standing": lambda: standing.watch(gateway.database_url, gateway.standing),
        "mqtt": lambda: mqtt_link(gateway),
        "time-outs": lambda: every(1.0, "time-out check", lambda: check_timeouts(gateway)),
        "availability": lambda: every(
            1.0, "availability feed", lambda: publish_availability(gateway)
        ),
    }
    if gateway.settings.gateway_deliver_webhooks:
        loops["webhooks"] = gateway.deliverer.run
    return [tasks.create_task(supervised(name, loop), name=name) for name, loop in loops.items()]


async def supervised(name: str, loop: Callable[[], Awaitable[None]], pause_s: float = 1.0) -> None:
    """Run ``loop`` for ever: if it fails (or returns), log why and start it again."""
    while True:
        try:
            await loop()
            log.error("gateway loop %s ended; starting it again", name)
        except Exception:
            log.exception("gateway loop %s failed; starting it again in %.0f s", name, pause_s)
        await asyncio.sleep(pause_s)


async def mqtt_link(gateway: Gateway) -> None:
    """Hold the MQTT link; hand each command acknowledgement to whoever waits for it."""
    delays = mqtt.backoff()
    # The broker requires the client id to be the identity (one per process).
    identifier = gateway.settings.mqtt.username or f"chargeline-gateway-{id(gateway):x}"
    while True:
        try:
            async with mqtt.client(gateway.settings.mqtt, identifier=identifier) as client:
                delays = mqtt.backoff()
                await _deliver_acks(gateway, client)
        except aiomqtt.MqttError as exc:
            delay = next(delays)
            log.warning("gateway MQTT link down (%s); retrying in %.1f s", exc, delay)
            await asyncio.sleep(delay)


async def _deliver_acks(gateway: Gateway, client: aiomqtt.Client) -> None:
    """Commands go out on ``client`` while it delivers acknowledgements, and on no other
    once it stops, however it stops (a fault of ours included: ``supervised`` restarts)."""
    await client.subscribe(gateway.waiter.subscription, qos=1)
    gateway.client = client
    try:
        async for message in client.messages:
            if isinstance(message.payload, bytes):
                gateway.waiter.deliver(message.topic.value, message.payload)
    finally:
        gateway.client = None


#: What a periodic step may meet and try again after: the database or the broker away.
_TRANSIENT = (psycopg.Error, aiomqtt.MqttError, Problem)


async def every(period_s: float, what: str, step: Callable[[], Awaitable[None]]) -> None:
    """``step`` once a ``period_s``, for ever; a transient failure is logged and the next
    period tries again (anything else ends the loop for ``supervised`` to restart)."""
    while True:
        await asyncio.sleep(period_s)
        try:
            await step()
        except _TRANSIENT as exc:
            log.warning("%s failed (%s); retrying", what, exc)


async def check_timeouts(gateway: Gateway) -> None:
    """Fail starts that will not happen, answer overdue status requests."""
    await expire_starts(gateway)
    async with gateway.pool.connection() as conn, conn.transaction():
        await status.answer_overdue(conn, older_than_s=gateway.settings.status_timeout_s)


async def publish_availability(gateway: Gateway) -> None:
    """outlet.availability webhooks for the outlets whose availability changed
    (``charging.availability_feed``)."""
    async with gateway.pool.connection() as conn, conn.transaction():
        await availability_feed.publish(conn, min_gap_s=gateway.settings.availability_min_gap_s)


async def expire_starts(gateway: Gateway) -> None:
    """Fail starts unanswered after ``start_timeout_s``, or whose controller went
    offline, and cancel them with an OFF: an edge that comes back later finds a newer
    generation and stays off."""
    async with gateway.pool.connection() as conn:
        for start in await repository.unanswered_starts(conn, gateway.settings.start_timeout_s):
            async with conn.transaction():
                now = gateway.settings.now()
                why: lifecycle.Event = (
                    lifecycle.ControllerOffline(now)
                    if start.controller_offline
                    else lifecycle.StartTimedOut(now)
                )
                stepped = await charges.apply(conn, start.charge_id, why)
                if stepped is None or stepped[0].state is not lifecycle.State.FAILED:
                    continue
                cancel = await command_records.record(
                    conn,
                    controller_id=start.controller_id,
                    outlet=start.outlet_no,
                    on=False,
                    charge_id=start.charge_id,
                    end_at=None,
                    issued_at=now,
                    issued_by="chargeline",
                )
            gateway.starts_failed[
                "controller_offline" if start.controller_offline else "timed_out"
            ] += 1
            log.warning(
                "charge %s: no answer from the breaker; cancelled",
                start.charge_id,
                extra={"charge_id": start.charge_id, "controller_id": start.controller_id},
            )
            await gateway.publish(cancel)

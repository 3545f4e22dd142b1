"""What the gateway, the authorization server and the webhook deliverer tell their
monitoring (``kernel.ops``): readiness (database, MQTT link) and metrics read from their
own counters when scraped. Fleet-wide counters carry no client or controller ids."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from psycopg_pool import AsyncConnectionPool

from cloud_gateway.context import Gateway
from cloud_gateway.webhooks import Deliverer
from kernel.ops import Check, Probe, by_label
from schemas.messages import CommandOutcome


def database_check(pool: Callable[[], AsyncConnectionPool[Any] | None]) -> Check:
    """Ready when a connection from ``pool`` (None: not open yet) answers."""

    async def database() -> bool:
        opened = pool()
        if opened is None:
            return False
        async with opened.connection() as conn:
            await conn.execute("SELECT 1")
        return True

    return database


def gateway_probe(gateway: Callable[[], Gateway | None]) -> Probe:
    """The partner API's probe; ``gateway`` is None until the app has started."""

    async def mqtt() -> bool:
        opened = gateway()
        return opened is not None and opened.client is not None

    def pool() -> AsyncConnectionPool[Any] | None:
        opened = gateway()
        return None if opened is None else opened.pool

    found = Probe("gateway", {"database": database_check(pool), "mqtt": mqtt})
    found.collect(_GatewayMetrics(gateway))
    return found


class _GatewayMetrics(Collector):
    def __init__(self, gateway: Callable[[], Gateway | None]) -> None:
        self.gateway = gateway

    def collect(self) -> Iterator[Metric]:
        gateway = self.gateway()
        if gateway is None:
            return
        commands = CounterMetricFamily(
            "chargeline_commands",
            "desired states sent, by state and by the edge's answer (no_answer: none within"
            " the call's wait)",
            labels=["state", "outcome"],
        )
        outcomes = [o.value for o in CommandOutcome] + ["no_answer"]
        for state in ("on", "off"):
            for outcome in outcomes:
                commands.add_metric([state, outcome], gateway.commands[state, outcome])
        yield commands
        yield by_label(
            CounterMetricFamily,
            "chargeline_starts_failed",
            "starts the breaker never answered, failed and cancelled with an OFF: timed_out"
            " (start_timeout_s) or controller_offline",
            "reason",
            {r: gateway.starts_failed[r] for r in ("timed_out", "controller_offline")},
        )
        yield GaugeMetricFamily(
            "chargeline_mqtt_connected",
            "1 while the MQTT link is up",
            value=int(gateway.client is not None),
        )
        yield from gateway.answer_seconds.collect()
        yield from gateway.start_seconds.collect()
        if gateway.settings.gateway_deliver_webhooks:
            yield from deliverer_metrics(gateway.deliverer)


def deliverer_metrics(deliverer: Deliverer) -> Iterator[Metric]:
    yield by_label(
        CounterMetricFamily,
        "chargeline_webhook_deliveries",
        "webhook posts by outcome (failed: retried later; gave_up: after 72 h of failures)",
        "outcome",
        {
            "delivered": deliverer.delivered,
            "failed": deliverer.failed_attempts,
            "gave_up": deliverer.given_up,
        },
    )
    yield GaugeMetricFamily(
        "chargeline_webhook_events_in_flight",
        "webhook events being posted now",
        value=deliverer.in_flight,
    )
    if deliverer.waiting is not None:
        yield GaugeMetricFamily(
            "chargeline_webhook_events_waiting",
            "webhook events not yet delivered (nor given up), counted every 10 s",
            value=deliverer.waiting,
        )


def reachable(database_url: str) -> Check:
    """Ready when a new connection to the database answers (for processes without a pool)."""

    async def database() -> bool:
        async with await psycopg.AsyncConnection.connect(
            database_url, connect_timeout=2, autocommit=True
        ) as conn:
            await conn.execute("SELECT 1")
        return True

    return database


def webhooks_probe(database_url: str, deliverer: Deliverer) -> Probe:
    """``chargeline webhooks``: the deliverer on its own."""
    found = Probe("webhooks", {"database": reachable(database_url)})

    class Metrics(Collector):
        def collect(self) -> Iterator[Metric]:
            yield from deliverer_metrics(deliverer)

    found.collect(Metrics())
    return found


def auth_probe(database_url: str, answers: Counter[str], errors: Sequence[str]) -> Probe:
    """The authorization server's probe: ready when its database answers; ``answers``
    counts its token answers by OAuth2 error code (``issued`` for a token)."""
    found = Probe("auth", {"database": reachable(database_url)})
    found.collect(_TokenMetrics(answers, errors))
    return found


class _TokenMetrics(Collector):
    def __init__(self, answers: Counter[str], errors: Sequence[str]) -> None:
        self.answers, self.errors = answers, errors

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "chargeline_tokens_issued", "access tokens issued", value=self.answers["issued"]
        )
        yield by_label(
            CounterMetricFamily,
            "chargeline_token_requests_refused",
            "token requests answered with an error, by its OAuth2 code (RFC 6749 5.2)",
            "error",
            {error: self.answers[error] for error in self.errors},
        )

"""``chargeline broker``: the embedded amqtt broker, hardened.

amqtt 0.12.1 has known gaps (FIELD-NOTES.md, and its issues #231, #308, #387, #391). The
fixes below each belong in amqtt itself; they are kept as small overrides of amqtt's
``Broker``, with a comment each, so they can go when amqtt has them. ``ChargelineBroker``
combines two halves: ``broker.connections`` (admission, authentication, keepalive, the end
of a connection) and ``broker.delivery`` (subscriptions, retained messages, broadcasts):

- authentication happens before the client id is looked up, so a refused client cannot
  take over, or wipe, another client's session;
- a client silent for 1.5 × its keepalive is disconnected and its will published, by one
  watchdog timer per connection instead of a task and timers per packet;
- messages a client has sent are all broadcast, in bursts, even when it disconnects right
  after (amqtt dropped what was still queued, though it had acknowledged it);
- packets larger than ``broker_max_packet_bytes`` close the connection before they are read;
- connections are capped in total and per source address (``kernel.limits``); a
  connection must send its CONNECT within ``broker_connect_timeout_s``, and a connection
  that ends for any reason is closed at once (amqtt left sockets in CLOSE-WAIT);
- QoS 2 publishes close the connection (the wire contract has none; amqtt kept every
  unreleased one in memory), subscriptions per session are capped, and a client may
  retain only on the topics the contract retains;
- what a client controls (client id, username, topic) is cut short and escaped before it
  is logged, and floods of refusals are logged as summaries (``kernel.logsafe``);
- the mTLS listener requires a client certificate (amqtt hard-codes "optional");
- retained messages are delivered only for a session's own subscriptions, by lookup;
- a message finds its subscribers by lookup, not by matching every filter held;
- retained messages persist byte for byte across restarts (``broker/retained.py``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from broker.access import RegistryAccess
from broker.connections import Connections
from broker.delivery import BroadcastLanes, Delivery, Subscriptions
from broker.settings import BrokerSettings
from kernel import ops, systemd
from kernel.limits import ConnectionBudget, connection_cap, raise_file_limit
from kernel.logsafe import Summarised
from kernel.ops import Probe, by_label

log = logging.getLogger(__name__)


def amqtt_config(settings: BrokerSettings, database_url: str | None = None) -> dict[str, Any]:
    listeners: dict[str, Any] = {}
    if settings.broker_bind:
        listeners["default"] = {"type": "tcp", "bind": settings.broker_bind}
    tls = {
        "ssl": True,
        "certfile": str(settings.broker_cert_file),
        "keyfile": str(settings.broker_key_file),
    }
    if settings.broker_tls_bind:
        listeners["tls"] = {"type": "tcp", "bind": settings.broker_tls_bind, **tls}
    if settings.broker_mtls_bind:
        # A cafile on a listener means "client certificates required" (ChargelineBroker).
        ca = str(settings.broker_client_ca_file)
        listeners["mtls"] = {"type": "tcp", "bind": settings.broker_mtls_bind, "cafile": ca, **tls}
    for listener in listeners.values():
        listener["max_connections"] = -1
    plugins: dict[str, Any] = {
        "broker.retained.RetainedStore": {
            "path": str(settings.data_dir / "broker" / "retained.sqlite"),
        },
    }
    if settings.broker_allow_anonymous:
        plugins["amqtt.plugins.authentication.AnonymousAuthPlugin"] = {"allow_anonymous": True}
    else:
        if database_url is None:
            raise ValueError("the broker needs the registry's database for its identities")
        plugins["broker.access.RegistryAccess"] = {
            "database_url": database_url,
            "topic_root": settings.topic_root,
        }
    return {"listeners": listeners, "plugins": plugins}


class ChargelineBroker(Delivery, Connections):
    """amqtt's broker with the fixes chargeline cannot wait for. Keep each one small."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        max_packet_bytes: int,
        max_connections: int = 10_000,
        max_connections_per_address: int = 1_000,
        connect_timeout_s: float = 5.0,
        max_subscriptions: int = 100,
    ) -> None:
        super().__init__(config)
        self.max_packet_bytes = max_packet_bytes
        self.connect_timeout_s = connect_timeout_s
        self.max_subscriptions = max_subscriptions
        self.connections_capped = 0
        self.budget = ConnectionBudget(
            connection_cap(max_connections, raise_file_limit()), max_connections_per_address
        )
        self.noisy = Summarised(log)
        self._closing: set[asyncio.Future[None]] = set()
        # amqtt logs repr(self._subscriptions) after every SUBSCRIBE, at debug level but
        # formatted whatever the level: every filter and session, per subscribe.
        self._subscriptions: Subscriptions = Subscriptions(self._subscriptions)
        self._filters_changed = 0
        self._wildcards: list[str] = []
        self._wildcards_version: tuple[int, int] | None = None
        self._wildcard_matches: dict[str, list[str]] = {}
        self._broadcast_queue = BroadcastLanes()
        found = self.plugins_manager.get_plugin("RegistryAccess")
        self.access: RegistryAccess | None = found if isinstance(found, RegistryAccess) else None

    @property
    def refusals(self) -> dict[str, int]:
        return dict(self.access.refusals) if self.access else {}

    # --- delivery: find a message's subscribers without scanning every filter ----------
    # amqtt 0.12.1 matches every message against every topic filter any client holds, and
    # formats a debug line for each miss whatever the log level. A controller holds ten
    # exact filters, so 200 controllers cut QoS 1 throughput from ~2,700 to ~660 msg/s
    # (bench.broker). Exact filters are found by one dictionary lookup; only the few
    # wildcard filters (the services') are matched one by one.

    # --- retained messages: only a session's own, found by lookup ------------------------


class EmbeddedBroker:
    """``async with EmbeddedBroker(settings): …`` runs the broker for the block's duration."""

    def __init__(self, settings: BrokerSettings, database_url: str | None = None) -> None:
        self.settings = settings
        self.database_url = database_url  # where identities live (unless anonymous)
        self.broker: ChargelineBroker | None = None

    async def __aenter__(self) -> EmbeddedBroker:
        self.broker = ChargelineBroker(
            amqtt_config(self.settings, self.database_url),
            max_packet_bytes=self.settings.broker_max_packet_bytes,
            max_connections=self.settings.broker_max_connections,
            max_connections_per_address=self.settings.broker_max_connections_per_address,
            connect_timeout_s=self.settings.broker_connect_timeout_s,
            max_subscriptions=self.settings.broker_max_subscriptions,
        )
        await self.broker.start()
        listening = [
            f"{kind} {bind}"
            for kind, bind in (
                ("tcp", self.settings.broker_bind),
                ("tls", self.settings.broker_tls_bind),
                ("mtls", self.settings.broker_mtls_bind),
            )
            if bind
        ]
        log.info(
            "broker listening on %s%s",
            ", ".join(listening),
            " (ANONYMOUS: development only)" if self.settings.broker_allow_anonymous else "",
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.broker is not None:
            if self.broker.refusals:
                log.info("refusals since start: %s", self.broker.refusals)
            await self.broker.shutdown()


async def serve(settings: BrokerSettings, database_url: str | None) -> None:
    async with (
        EmbeddedBroker(settings, database_url) as embedded,
        ops.served(settings.ops_bind, probe(embedded)),
        systemd.service(),
    ):
        await asyncio.Event().wait()


def probe(embedded: EmbeddedBroker) -> Probe:
    """What the broker tells its monitoring (``kernel.ops``): ready while it accepts
    connections; its open connections and its refusals by kind (never by client)."""

    async def accepting() -> bool:
        broker = embedded.broker
        return broker is not None and broker.transitions.state == "started"

    found = Probe("broker", {"accepting": accepting})
    found.collect(_BrokerMetrics(embedded))
    return found


class _BrokerMetrics(Collector):
    def __init__(self, embedded: EmbeddedBroker) -> None:
        self.embedded = embedded

    def collect(self) -> Iterator[Metric]:
        broker = self.embedded.broker
        if broker is None:
            return
        yield GaugeMetricFamily(
            "chargeline_broker_connections", "open client connections", value=broker.budget.open
        )
        counted = broker.refusals
        yield by_label(
            CounterMetricFamily,
            "chargeline_broker_refusals",
            "refused by kind: connect (credentials), publish, subscribe, receive (the access"
            " policy), capped (a connection cap)",
            "kind",
            {
                **{k: counted.get(k, 0) for k in ("connect", "publish", "subscribe", "receive")},
                "capped": broker.connections_capped,
            },
        )

"""What the partner API's handlers share (``Gateway``): settings, the database pools, token
checks, the client standing, the rate limit, the MQTT client and the waiters for the
edge's acknowledgements; and the steps every command takes: publish, then wait briefly for
the edge's answer and apply it.

The app's lifespan opens one ``Gateway`` (``Gateway.opened``) and hands it to the handlers
as its typed state (``of(request)``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime as dt
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TypedDict

import aiomqtt
import httpx2
from prometheus_client import Histogram
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request

from charging import charges, lifecycle
from cloud_gateway import commands, standing
from cloud_gateway.commands import AckWaiter
from cloud_gateway.problems import Problem
from cloud_gateway.ratelimit import RateLimiter, retry_after
from cloud_gateway.repository import CHARGE_COLUMNS, ChargeRow, Conn, charge_cursor, select_charge
from cloud_gateway.settings import GatewaySettings
from cloud_gateway.standing import Standing
from cloud_gateway.tokens import Caller, TokenError, TokenValidator
from cloud_gateway.webhooks import Deliverer
from kernel import logformat
from schemas.messages import CommandAck, DesiredState

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class NewCharge:
    """A charge the current call has just created, as ``charges.apply_to_new`` needs it."""

    charge: lifecycle.Charge
    partner_charge_id: str
    outlet_id: str
    end_at: dt.datetime


class State(TypedDict):
    """The app's lifespan state: what ``request.state`` holds."""

    gateway: Gateway


def of(request: Request) -> Gateway:
    gateway: Gateway = request.state.gateway
    return gateway


class Gateway:
    def __init__(
        self, settings: GatewaySettings, database_url: str, http: httpx2.AsyncClient | None = None
    ) -> None:
        """``http``: the client for fetching the token keys (default: a new one, closed with
        the gateway)."""
        self.settings = settings
        self.topics = settings.topics
        self.database_url = database_url
        # Autocommit: a read is one round trip, and ``conn.transaction()`` is a real
        # transaction whose end is the commit. (Without it, every block ran inside one
        # implicit transaction committed only when the connection went back to the pool:
        # a command published inside the block was not yet on disk.)
        self.pool = AsyncConnectionPool(
            database_url, min_size=2, max_size=10, open=False, kwargs={"autocommit": True}
        )
        #: For applying the edge's acknowledgements, which need not wait for the disk:
        #: ingest applies the same acknowledgements from the broker, durably. A crash loses
        #: nothing, and a start's answer saves the transaction around one statement.
        self.acks_pool = AsyncConnectionPool(
            database_url,
            min_size=1,
            max_size=4,
            open=False,
            kwargs={"autocommit": True, "options": "-c synchronous_commit=off"},
        )
        self.http = http or httpx2.AsyncClient(timeout=10)
        self._own_http = http is None
        self.tokens = TokenValidator(
            issuer=settings.issuer,
            audience=settings.audience,
            jwks_url=settings.jwks,
            leeway_s=settings.token_leeway_s,
            max_lifetime_s=settings.token_max_lifetime_s,
            http=self.http,
        )
        self.standing = Standing()
        self.limiter = RateLimiter(settings.api_rate_per_s, settings.api_burst)
        self.waiter = AckWaiter(self.topics)
        #: Commands by (desired state, outcome: the edge's, or ``no_answer`` within the
        #: wait) and the edge's answer times, for the metrics (cloud_gateway.probe).
        self.commands: collections.Counter[tuple[str, str]] = collections.Counter()
        #: Starts failed and cancelled by ``background.expire_starts``, by why.
        self.starts_failed: collections.Counter[str] = collections.Counter()
        self.answer_seconds = Histogram(
            "chargeline_command_answer_seconds",
            "time from publishing a desired state to the edge's acknowledgement",
            ["state"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=None,
        )
        self.start_seconds = Histogram(
            "chargeline_api_start_seconds",
            "a partner's start, from the call to the answer (breaker on, or accepted)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=None,
        )
        self.client: aiomqtt.Client | None = None  # set while the MQTT link is up
        self._publishing: set[asyncio.Task[None]] = set()
        self.deliverer = Deliverer(
            database_url,
            timeout_s=settings.webhook_timeout_s,
            concurrency=settings.webhook_concurrency,
            allow_private=settings.webhook_allow_private,
        )

    @classmethod
    @contextlib.asynccontextmanager
    async def opened(
        cls, settings: GatewaySettings, database_url: str, http: httpx2.AsyncClient | None = None
    ) -> AsyncIterator[Gateway]:
        gateway = cls(settings, database_url, http)
        async with contextlib.AsyncExitStack() as stack:
            await gateway.pool.open()
            stack.push_async_callback(gateway.pool.close)
            await gateway.acks_pool.open()
            stack.push_async_callback(gateway.acks_pool.close)
            if gateway._own_http:
                stack.push_async_callback(gateway.http.aclose)
            yield gateway

    # --- every call ---------------------------------------------------------------------
    async def authorize(self, request: Request, scope: str) -> Caller:
        """The caller of a valid token with ``scope``, within its rate; else the problem."""
        # A refused token raises TokenError, which problems.HANDLERS answers (RFC 6750).
        caller = await self.tokens.check(request.headers.get("authorization"), scope)
        logformat.bind(client_id=caller.client_id)  # on this call's log lines from here on
        await self._check_standing(caller)
        wait = self.limiter.take(caller.client_id)
        if wait:
            raise Problem("rate-limited", "slow down", headers={"Retry-After": retry_after(wait)})
        return caller

    async def _check_standing(self, caller: Caller) -> None:
        """A validly signed token of a client disabled, removed or rotated since is void."""
        if caller.client_id not in self.standing.clients:
            async with self.pool.connection() as conn:
                await standing.lookup(conn, self.standing, caller.client_id)
        refusal = self.standing.refusal(caller.client_id, float(caller.claims["iat"]))
        if refusal is not None:
            raise TokenError(401, "invalid_token", refusal)

    # --- commands -----------------------------------------------------------------------
    async def publish(self, want: DesiredState) -> None:
        """Send a desired state without waiting for the broker's PUBACK.

        The edge's acknowledgement is the answer that matters, and it may come before the
        PUBACK does; a command that never arrives ends as a start time-out.
        """
        client = self.client
        if client is None:
            raise Problem("broker-unavailable", "the command could not be sent; retry")
        task = asyncio.create_task(commands.publish(client, self.topics, want))
        self._publishing.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task[None]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("publishing a command failed (%s); its time-out will follow", exc)

    async def send(
        self, charge_id: str, want: DesiredState, *, new: NewCharge | None = None
    ) -> ChargeRow:
        """Publish a recorded command and wait briefly for the edge's answer; the charge
        as it is then (``new``: the charge this call has just created)."""
        answer = self.waiter.expect(want.controller_id, want.outlet, want.generation)
        await self.publish(want)
        return await self._await_ack(charge_id, want, answer, new=new)

    async def _await_ack(
        self,
        charge_id: str,
        want: DesiredState,
        answer: asyncio.Future[CommandAck],
        *,
        new: NewCharge | None = None,
    ) -> ChargeRow:
        """Wait briefly for the edge and apply its answer if it comes in time; the charge.

        ``new`` is a charge this call has just created: its answer is applied in one
        statement (``charges.apply_to_new``), unless something else has moved it already.
        """
        sent = time.monotonic()
        try:
            ack = await asyncio.wait_for(answer, self.settings.start_wait_s)
        except TimeoutError:
            self.waiter.forget(want.controller_id, want.outlet, want.generation)
            ack = None
        state = "on" if want.on else "off"
        self.commands[state, ack.outcome.value if ack else "no_answer"] += 1
        if ack is not None:
            self.answer_seconds.labels(state).observe(time.monotonic() - sent)
        event = ack and lifecycle.Acked.of(ack)
        if event is not None and new is not None:
            async with self.acks_pool.connection() as conn:
                row = await _apply_to_new(conn, new, event)
            if row is not None:
                return row
            # Something else wrote the new charge first (ingest, a baseline reading): step
            # it as it is now.
        async with self.acks_pool.connection() as conn:
            async with conn.pipeline(), conn.transaction():
                if event is not None:
                    await charges.apply(conn, charge_id, event)
                cur = await select_charge(conn, charge_id)  # read with the commit
            row = await cur.fetchone()
        assert row is not None
        return row


async def _apply_to_new(conn: Conn, new: NewCharge, event: lifecycle.Acked) -> ChargeRow | None:
    cur = charge_cursor(conn)
    await charges.apply_to_new(
        cur,
        new.charge,
        event,
        partner_charge_id=new.partner_charge_id,
        outlet_id=new.outlet_id,
        end_at=new.end_at,
        columns=CHARGE_COLUMNS,
    )
    return await cur.fetchone()

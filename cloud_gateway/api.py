"""The partner API (``chargeline gateway``): charges started and stopped from the partner's
server, answered after the breaker has moved or with "accepted, pending".

Every call carries an access token from the authorization server; it is checked through
the published keys alone (``cloud_gateway.tokens``). Errors are RFC 9457 problem bodies
(``application/problem+json``) whose ``type`` names the problem and whose ``detail`` says
what to change. The OpenAPI document is at ``/openapi.json``.

Starting a charge, in one database transaction: check the outlet and its controller,
allocate the outlet's next command generation, record the command and the charge (a
partial unique index refuses a second active charge on the outlet). After the commit the
desired state is published retained; the call waits up to ``start_wait_s`` for the edge's
acknowledgement and applies it to the charge itself (ingest applies the same one from the
durable stream; the row lock and the state machine make that harmless).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import json
import logging
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, fields
from typing import Any

import aiomqtt
import httpx2
import psycopg
from psycopg import errors
from psycopg.rows import class_row, dict_row
from psycopg_pool import AsyncConnectionPool
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from charging import charges, lifecycle, status
from cloud_gateway import commands, standing
from cloud_gateway.commands import AckWaiter
from cloud_gateway.models import (
    MONTH_PATTERN,
    Charge,
    OutletStatus,
    StartCharge,
    StatusRequestAccepted,
    Usage,
)
from cloud_gateway.openapi import document as openapi_document
from cloud_gateway.problems import Problem
from cloud_gateway.ratelimit import RateLimiter, retry_after
from cloud_gateway.settings import GatewaySettings
from cloud_gateway.standing import Standing
from cloud_gateway.tokens import Caller, TokenError, TokenValidator
from cloud_gateway.webhooks import Deliverer
from kernel import mqtt
from kernel.times import utc
from schemas.codec import encode
from schemas.messages import (
    CHARGE_ID_PATTERN,
    OUTLET_ID_PATTERN,
    CommandAck,
    DesiredState,
    StatusRequest,
)

log = logging.getLogger(__name__)

_CHARGE_ID = re.compile(CHARGE_ID_PATTERN)
_OUTLET_ID = re.compile(OUTLET_ID_PATTERN)
_MONTH = re.compile(MONTH_PATTERN)


def _charge_id(request: Request) -> str:
    """The charge id in the path; one outside its alphabet names no charge (404)."""
    charge_id: str = request.path_params["charge_id"]
    if not _CHARGE_ID.match(charge_id):
        raise Problem("unknown-charge", "no such charge for this client")
    return charge_id


def _outlet_id(request: Request) -> str:
    """The outlet id in the path; one outside its alphabet names no outlet (404)."""
    outlet_id: str = request.path_params["outlet_id"]
    if not _OUTLET_ID.match(outlet_id):
        raise Problem("unknown-outlet", "no outlet with this id")
    return outlet_id


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit`` bytes:
    from its Content-Length before anything is read, else while it streams in."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Problem("body-too-large", f"request bodies are limited to {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise Problem("body-too-large", f"request bodies are limited to {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise Problem("invalid-request", "the body was cut short") from None
    return b"".join(chunks)


def _invalid(exc: ValidationError) -> Problem:
    """A 422 naming each field that is wrong and why (no input values echoed)."""
    detail = "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
        for e in exc.errors(include_url=False)
    )
    return Problem("invalid-request", detail)


@dataclass(frozen=True, slots=True)
class _NewCharge:
    """A charge the current call has just created, as ``charges.apply_to_new`` needs it."""

    charge: lifecycle.Charge
    partner_charge_id: str
    outlet_id: str
    end_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ChargeRow:
    """A ``charges`` row as the API reads it (``class_row`` fills it by column name)."""

    charge_id: str  # the system's key (charges.internal_id)
    partner_charge_id: str  # the client's own id for it: the only one it ever sees
    outlet_id: str
    state: str
    requested_at: dt.datetime
    started_at: dt.datetime | None
    rise_at: dt.datetime | None
    stopped_at: dt.datetime | None
    end_at: dt.datetime
    stop_reason: str | None
    failure: str | None
    energy_wh: float
    client_id: str
    request_sha256: bytes
    controller_id: str
    outlet_no: int

    def json(self) -> dict[str, Any]:
        """What the partner sees of a charge (``models.Charge``)."""
        return Charge(
            charge_id=self.partner_charge_id,
            outlet_id=self.outlet_id,
            state=self.state,  # a State value, checked by the model
            requested_at=self.requested_at,
            started_at=self.started_at,
            current_rise_at=self.rise_at,
            stopped_at=self.stopped_at,
            end_at=self.end_at,
            stop_reason=self.stop_reason,
            failure=self.failure,
            energy_wh=round(self.energy_wh, 3),
        ).model_dump(mode="json")


_CHARGE_COLUMNS = tuple(f.name for f in fields(ChargeRow))
_SELECT_CHARGE = f"SELECT {', '.join(_CHARGE_COLUMNS)} FROM charges WHERE charge_id = %s"
_SELECT_OWN_CHARGE = (
    f"SELECT {', '.join(_CHARGE_COLUMNS)} FROM charges"
    " WHERE client_id = %s AND partner_charge_id = %s"
)


async def _select_charge(
    conn: psycopg.AsyncConnection[Any], charge_id: str
) -> psycopg.AsyncCursor[ChargeRow]:
    """Send the query (in pipeline mode it waits for the next sync); fetch from the cursor."""
    return await _charge_cursor(conn, _SELECT_CHARGE, (charge_id,))


async def _select_own_charge(
    conn: psycopg.AsyncConnection[Any], client_id: str, partner_charge_id: str
) -> psycopg.AsyncCursor[ChargeRow]:
    """``_select_charge`` by the id a client gave: another client's charges do not exist
    for it (the same id names a different charge, or none)."""
    return await _charge_cursor(conn, _SELECT_OWN_CHARGE, (client_id, partner_charge_id))


async def _charge_cursor(
    conn: psycopg.AsyncConnection[Any], query: str, params: tuple[str, ...]
) -> psycopg.AsyncCursor[ChargeRow]:
    cur = conn.cursor(row_factory=class_row(ChargeRow))
    await cur.execute(query, params)
    return cur


#: (controller_id, outlet_no, online) of one outlet, for ``_reachable``.
_OUTLET_LOOKUP = (
    "SELECT o.controller_id, o.outlet_no, s.online FROM outlets o"
    " LEFT JOIN controller_status s USING (controller_id) WHERE o.outlet_id = %s"
)


def _reachable(row: tuple[Any, ...] | None, outlet_id: str, offline_hint: str) -> tuple[str, int]:
    """(controller, outlet number) from an ``(controller_id, outlet_no, online)`` lookup,
    or the problem: an unknown outlet (404) or an offline controller (503)."""
    if row is None:
        raise Problem("unknown-outlet", f"no outlet {outlet_id!r}")
    controller_id, outlet_no, online = row
    if not online:
        raise Problem(
            "controller-offline",
            f"the controller of outlet {outlet_id!r} is offline; {offline_hint}",
        )
    return controller_id, outlet_no


class Gateway:
    """What the API's handlers share: settings, pool, token checks, MQTT and waiters."""

    def __init__(self, settings: GatewaySettings, database_url: str) -> None:
        self.settings = settings
        self.topics = settings.topics
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
        self.http = httpx2.AsyncClient(timeout=10)
        self.tokens = TokenValidator(
            issuer=settings.issuer,
            audience=settings.audience,
            jwks_url=settings.jwks,
            leeway_s=settings.token_leeway_s,
            max_lifetime_s=settings.token_max_lifetime_s,
            http=self.http,
        )
        self.database_url = database_url
        self.standing = Standing()
        self.limiter = RateLimiter(settings.api_rate_per_s, settings.api_burst)
        self.waiter = AckWaiter(self.topics)
        self.client: aiomqtt.Client | None = None
        self._publishing: set[asyncio.Task[None]] = set()
        self.deliverer = Deliverer(
            database_url,
            timeout_s=settings.webhook_timeout_s,
            concurrency=settings.webhook_concurrency,
            allow_private=settings.webhook_allow_private,
        )

    # --- background: MQTT link --------------------------------------------------------
    async def mqtt_forever(self) -> None:
        delays = mqtt.backoff()
        while True:
            try:
                # The broker requires the client id to be the identity (one per process).
                identifier = self.settings.mqtt.username or f"chargeline-gateway-{id(self):x}"
                async with mqtt.client(self.settings.mqtt, identifier=identifier) as client:
                    await client.subscribe(self.waiter.subscription, qos=1)
                    self.client = client
                    delays = mqtt.backoff()
                    async for message in client.messages:
                        if isinstance(message.payload, bytes):
                            self.waiter.deliver(message.topic.value, message.payload)
            except aiomqtt.MqttError as exc:
                self.client = None
                delay = next(delays)
                log.warning("gateway MQTT link down (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    # --- background: what never got an answer -------------------------------------------
    async def timeouts_forever(self) -> None:
        """Once a second: fail starts that will not happen, answer overdue status requests."""
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._expire_starts()
                async with self.pool.connection() as conn, conn.transaction():
                    await status.answer_overdue(conn, older_than_s=self.settings.status_timeout_s)
            except (psycopg.Error, aiomqtt.MqttError, Problem) as exc:
                log.warning("time-out check failed (%s); retrying", exc)

    async def _expire_starts(self) -> None:
        """Fail starts unanswered after ``start_timeout_s``, or whose controller went
        offline, and cancel them with an OFF: an edge that comes back later finds a newer
        generation and stays off."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT c.charge_id, c.controller_id, c.outlet_no, s.online IS FALSE"
                " FROM charges c LEFT JOIN controller_status s USING (controller_id)"
                " WHERE c.state = 'requested' AND (s.online IS FALSE"
                "   OR c.requested_at < now() - make_interval(secs => %s))",
                (self.settings.start_timeout_s,),
            )
            for charge_id, controller_id, outlet_no, offline in await cur.fetchall():
                async with conn.transaction():
                    now = self.settings.now()
                    why: lifecycle.Event = (
                        lifecycle.ControllerOffline(now)
                        if offline
                        else lifecycle.StartTimedOut(now)
                    )
                    stepped = await charges.apply(conn, charge_id, why)
                    if stepped is None or stepped[0].state is not lifecycle.State.FAILED:
                        continue
                    cancel = await commands.record(
                        conn,
                        controller_id=controller_id,
                        outlet=outlet_no,
                        on=False,
                        charge_id=charge_id,
                        end_at=None,
                        issued_at=now,
                        issued_by="chargeline",
                    )
                log.warning("charge %s: no answer from the breaker; cancelled", charge_id)
                await self._publish(cancel)

    # --- helpers ----------------------------------------------------------------------
    async def _check_standing(self, caller: Caller) -> None:
        """A validly signed token of a client disabled, removed or rotated since is void."""
        if caller.client_id not in self.standing.clients:
            async with self.pool.connection() as conn:
                await standing.lookup(conn, self.standing, caller.client_id)
        refusal = self.standing.refusal(caller.client_id, float(caller.claims["iat"]))
        if refusal is not None:
            raise TokenError(401, "invalid_token", refusal)

    async def authorize(self, request: Request, scope: str) -> Caller:
        try:
            caller = await self.tokens.check(request.headers.get("authorization"), scope)
            await self._check_standing(caller)
        except TokenError as exc:
            headers = {}
            if exc.status in (401, 403):  # RFC 6750 §3: a fixed text, nothing echoed
                headers["WWW-Authenticate"] = f'Bearer error="{exc.error}"'
            raise Problem(exc.error.replace("_", "-"), exc.description, headers=headers) from None
        wait = self.limiter.take(caller.client_id)
        if wait:
            raise Problem("rate-limited", "slow down", headers={"Retry-After": retry_after(wait)})
        return caller

    async def _own_charge(
        self, conn: psycopg.AsyncConnection[Any], caller: Caller, partner_charge_id: str
    ) -> ChargeRow:
        row = await (await _select_own_charge(conn, caller.client_id, partner_charge_id)).fetchone()
        if row is None:
            raise Problem("unknown-charge", "no such charge for this client")
        return row

    async def _await_ack(
        self,
        charge_id: str,
        want: Any,
        answer: asyncio.Future[CommandAck],
        *,
        new: _NewCharge | None = None,
    ) -> ChargeRow:
        """Wait briefly for the edge and apply its answer if it comes in time; the charge.

        ``new`` is a charge this call has just created: its answer is applied in one
        statement (``charges.apply_to_new``), unless something else has moved it already.
        """
        try:
            ack = await asyncio.wait_for(answer, self.settings.start_wait_s)
        except TimeoutError:
            self.waiter.forget(want.controller_id, want.outlet, want.generation)
            ack = None
        event = ack and lifecycle.Acked.of(ack)
        if event is not None and new is not None:
            async with self.acks_pool.connection() as conn:
                cur = conn.cursor(row_factory=class_row(ChargeRow))
                await charges.apply_to_new(
                    cur,
                    new.charge,
                    event,
                    partner_charge_id=new.partner_charge_id,
                    outlet_id=new.outlet_id,
                    end_at=new.end_at,
                    columns=_CHARGE_COLUMNS,
                )
                row = await cur.fetchone()
            if row is not None:
                return row
            # Something else wrote the new charge first (ingest, a baseline reading): step
            # it as it is now.
        async with self.acks_pool.connection() as conn:
            async with conn.pipeline(), conn.transaction():
                if event is not None:
                    await charges.apply(conn, charge_id, event)
                cur = await _select_charge(conn, charge_id)  # read with the commit
            row = await cur.fetchone()
        assert row is not None
        return row

    async def _publish(self, want: Any) -> None:
        """Send a desired state without waiting for the broker's PUBACK.

        The edge's acknowledgement is the answer that matters, and it may come before the
        PUBACK does; a command that never arrives ends as a start time-out.
        """
        client = self.client
        if client is None:
            raise Problem(
                "broker-unavailable",
                "the command could not be sent; retry",
            )
        task = asyncio.create_task(commands.publish(client, self.topics, want))
        self._publishing.add(task)
        task.add_done_callback(self._published)

    def _published(self, task: asyncio.Task[None]) -> None:
        self._publishing.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.warning("publishing a command failed (%s); its time-out will follow", exc)

    def _end_at_problem(self, end_at: float, now: float) -> Problem | None:
        if end_at <= now:
            return Problem("end-at-past", "end_at has already passed")
        if end_at > now + self.settings.max_charge_s + 60:
            return Problem(
                "end-at-too-far",
                f"end_at may be at most {self.settings.max_charge_s / 3600:g} hours away",
            )
        return None

    async def _record_start(
        self,
        conn: psycopg.AsyncConnection[Any],
        body: StartCharge,
        *,
        client_id: str,
        charge_id: str,
        end_at: float,
        now: float,
        digest: bytes,
    ) -> DesiredState | None:
        """The start's command and charge in one durable transaction (one round trip);
        the desired state to publish, or None when the guards let nothing be written."""
        try:
            async with conn.pipeline(), conn.transaction():
                recorded = await commands.send_start(
                    conn,
                    outlet_id=body.outlet_id,
                    charge_id=charge_id,
                    end_at=end_at,
                    issued_at=now,
                    issued_by=client_id,
                )
                await charges.create(
                    conn,
                    charge_id=charge_id,
                    partner_charge_id=body.charge_id,
                    client_id=client_id,
                    outlet_id=body.outlet_id,
                    end_at=end_at,
                    request_sha256=digest,
                )
            return await recorded.desired()
        except errors.UniqueViolation as exc:
            if "charges_one_active_per_outlet" in str(exc):
                raise Problem("outlet-busy", f"outlet {body.outlet_id!r} is charging") from None
            raise Problem(
                "charge-id-conflict",
                f"charge {body.charge_id!r} exists",
            ) from None

    # --- handlers -----------------------------------------------------------------------
    async def start(self, request: Request) -> Response:
        caller = await self.authorize(request, "charges:write")
        raw = await _body(request, self.settings.max_body_bytes)
        try:
            body = StartCharge.model_validate_json(raw)
        except ValidationError as exc:
            raise _invalid(exc) from None
        now = self.settings.now()
        end_at = body.end_at.timestamp() if body.end_at else now + self.settings.max_charge_s
        digest = hashlib.sha256(
            json.dumps(
                [caller.client_id, body.outlet_id, body.charge_id, body.end_at and end_at]
            ).encode()
        ).digest()
        bad_end = self._end_at_problem(end_at, now)
        charge_id = charges.internal_id(caller.client_id, body.charge_id)
        async with self.pool.connection() as conn:
            # The usual case is one round trip and the commit: the command and the charge
            # are written only if the outlet exists, its controller is online and the
            # charge id is new (in SQL, see commands.send_start).
            want = None
            if bad_end is None:
                want = await self._record_start(
                    conn,
                    body,
                    client_id=caller.client_id,
                    charge_id=charge_id,
                    end_at=end_at,
                    now=now,
                    digest=digest,
                )
            if want is None:
                # Nothing was written: say why, or answer a repeated request.
                async with conn.pipeline():
                    by_id = await _select_own_charge(conn, caller.client_id, body.charge_id)
                    by_outlet = await conn.execute(_OUTLET_LOOKUP, (body.outlet_id,))
                existing = await by_id.fetchone()
                outlet = await by_outlet.fetchone()
                if existing is not None:
                    if bytes(existing.request_sha256) != digest:
                        raise Problem(
                            "charge-id-conflict",
                            f"charge {body.charge_id!r} exists with a different request",
                        )
                    return JSONResponse(existing.json(), status_code=200)
                if bad_end is not None:
                    raise bad_end
                _reachable(outlet, body.outlet_id, "no charge can start")
                # Reachable now: the controller came online since the guard looked.
                raise Problem(
                    "controller-offline",
                    f"the controller of outlet {body.outlet_id!r} just came online; retry",
                )
        controller_id, outlet_no = want.controller_id, want.outlet
        answer = self.waiter.expect(controller_id, outlet_no, want.generation)
        await self._publish(want)
        new = _NewCharge(
            lifecycle.start(charge_id, want.generation), body.charge_id, body.outlet_id, utc(end_at)
        )
        row = await self._await_ack(charge_id, want, answer, new=new)
        status = 201 if row.state != lifecycle.State.REQUESTED.value else 202
        return JSONResponse(row.json(), status_code=status)

    async def read(self, request: Request) -> Response:
        caller = await self.authorize(request, "charges:read")
        async with self.pool.connection() as conn:
            row = await self._own_charge(conn, caller, _charge_id(request))
        return JSONResponse(row.json())

    async def stop(self, request: Request) -> Response:
        caller = await self.authorize(request, "charges:write")
        async with self.pool.connection() as conn:
            row = await self._own_charge(conn, caller, _charge_id(request))
            charge_id = row.charge_id
            if lifecycle.State(row.state) not in lifecycle.STOPPABLE:
                return JSONResponse(row.json())  # stopping, stopped or failed: idempotent
            async with conn.pipeline(), conn.transaction():
                want = await commands.record_stop(
                    conn,
                    charge_id=charge_id,
                    controller_id=row.controller_id,
                    outlet=row.outlet_no,
                    issued_by=caller.client_id,
                    reason="partner stopped",
                    now=self.settings.now(),
                )
        answer = self.waiter.expect(want.controller_id, want.outlet, want.generation)
        await self._publish(want)
        row = await self._await_ack(charge_id, want, answer)
        return JSONResponse(row.json())

    async def outlet_status(self, request: Request) -> Response:
        """The outlet's last known state: its latest minute reading and its controller."""
        caller = await self.authorize(request, "outlets:read")
        outlet_id = _outlet_id(request)
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            # Another client's charge shows only as "charging": never its id or figures.
            await cur.execute(
                "SELECT s.online, r.minute, r.energy_wh, r.voltage_v, r.current_a, r.breaker_on,"
                " a.client_id IS NOT NULL AS charging,"
                " CASE WHEN a.client_id = %s THEN a.partner_charge_id END AS active_charge_id"
                " FROM outlets o LEFT JOIN controller_status s USING (controller_id)"
                " LEFT JOIN LATERAL (SELECT * FROM outlet_readings r"
                "   WHERE r.controller_id = o.controller_id AND r.outlet_no = o.outlet_no"
                "   ORDER BY minute DESC LIMIT 1) r ON true"
                " LEFT JOIN charges a ON a.outlet_id = o.outlet_id"
                f"   AND a.state IN ({charges.ACTIVE_SQL})"
                " WHERE o.outlet_id = %s",
                (caller.client_id, outlet_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise Problem("unknown-outlet", f"no outlet {outlet_id!r}")
        answer = OutletStatus(
            outlet_id=outlet_id,
            controller_online=bool(row["online"]),
            measured_at=row["minute"],
            energy_wh=row["energy_wh"],
            voltage_v=row["voltage_v"],
            current_a=row["current_a"],
            breaker_on=row["breaker_on"],
            charging=row["charging"],
            active_charge_id=row["active_charge_id"],
        )
        return JSONResponse(answer.model_dump(mode="json"))

    async def status_request(self, request: Request) -> Response:
        """Ask the edge for a fresh sample; the answer comes as an ``outlet.status`` webhook."""
        caller = await self.authorize(request, "outlets:read")
        outlet_id = _outlet_id(request)
        client = self.client
        if client is None:
            raise Problem("broker-unavailable", "the request could not be sent")
        request_id = f"sr_{secrets.token_hex(12)}"
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                _OUTLET_LOOKUP,
                (outlet_id,),
            )
            controller_id, outlet_no = _reachable(
                await cur.fetchone(),
                outlet_id,
                f"GET /v1/outlets/{outlet_id}/status has its last known status",
            )
            cur = await conn.execute(
                "INSERT INTO status_requests (request_id, client_id, outlet_id, controller_id,"
                " outlet_no) VALUES (%s, %s, %s, %s, %s) RETURNING requested_at",
                (request_id, caller.client_id, outlet_id, controller_id, outlet_no),
            )
            (requested_at,) = await cur.fetchone() or (None,)
        ask = StatusRequest(controller_id, request_id, self.settings.now(), outlet_no)
        try:
            await client.publish(self.topics.request(controller_id), encode(ask), qos=1)
        except aiomqtt.MqttError as exc:  # recorded: the time-out answers from the store
            log.warning("status request %s not sent (%s)", request_id, exc)
        accepted = StatusRequestAccepted(
            request_id=request_id,
            outlet_id=outlet_id,
            state="pending",
            requested_at=requested_at,
        )
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202)

    async def usage(self, request: Request) -> Response:
        """One month of the client's charges on an outlet: kWh, count and fee."""
        caller = await self.authorize(request, "usage:read")
        outlet_id = _outlet_id(request)
        month = request.query_params.get("month", "")
        if not _MONTH.match(month):
            raise Problem("invalid-request", "month must be given as YYYY-MM (1000-01 to 9999-12)")
        first = dt.datetime.strptime(month, "%Y-%m").date()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT s.tariff_per_kwh, s.currency, s.timezone,"
                " count(c.charge_id), coalesce(sum(c.energy_wh), 0)"
                " FROM outlets o JOIN controllers USING (controller_id) JOIN sites s USING (site_id)"
                " LEFT JOIN charges c ON c.outlet_id = o.outlet_id AND c.client_id = %s"
                "  AND c.state = 'stopped'"
                "  AND date_trunc('month', c.stopped_at AT TIME ZONE s.timezone)::date = %s"
                " WHERE o.outlet_id = %s GROUP BY 1, 2, 3",
                (caller.client_id, first, outlet_id),
            )
            row = await cur.fetchone()
        if row is None:
            raise Problem("unknown-outlet", f"no outlet {outlet_id!r}")
        tariff, currency, timezone, count, energy_wh = row
        kwh = float(energy_wh) / 1000
        usage = Usage(
            outlet_id=outlet_id,
            month=month,
            timezone=timezone,
            charges=count,
            energy_kwh=round(kwh, 3),
            tariff_per_kwh=float(tariff),
            fee=round(kwh * float(tariff), 2),
            currency=currency,
        )
        return JSONResponse(usage.model_dump(mode="json"))


def create_app(settings: GatewaySettings, database_url: str) -> Starlette:
    gateway = Gateway(settings, database_url)
    document = openapi_document(settings)

    def handle(
        handler: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except Problem as problem:
                return problem.response()

        return wrapped

    async def not_found(request: Request, exc: Exception) -> Response:
        return Problem("not-found", f"no {request.url.path!r} here; see /openapi.json").response()

    async def not_allowed(request: Request, exc: Exception) -> Response:
        allow = (exc.headers or {}).get("Allow", "") if isinstance(exc, HTTPException) else ""
        detail = f"{request.method} is not allowed here" + (f"; use {allow}" if allow else "")
        headers = {"Allow": allow} if allow else None
        return Problem("method-not-allowed", detail, headers=headers).response()

    async def internal(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return Problem("internal-error", "the request failed on our side; retry").response()

    async def spec(request: Request) -> Response:
        return JSONResponse(document)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await gateway.pool.open()
        await gateway.acks_pool.open()
        tasks = [
            asyncio.create_task(standing.watch(gateway.database_url, gateway.standing)),
            asyncio.create_task(gateway.mqtt_forever()),
            asyncio.create_task(gateway.timeouts_forever()),
        ]
        if settings.gateway_deliver_webhooks:
            tasks.append(asyncio.create_task(gateway.deliverer.run()))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await gateway.pool.close()
            await gateway.acks_pool.close()
            await gateway.http.aclose()

    return Starlette(
        routes=[
            Route("/v1/charges", handle(gateway.start), methods=["POST"]),
            Route("/v1/charges/{charge_id}", handle(gateway.read), methods=["GET"]),
            Route("/v1/charges/{charge_id}/stop", handle(gateway.stop), methods=["POST"]),
            Route("/v1/outlets/{outlet_id}/status", handle(gateway.outlet_status), methods=["GET"]),
            Route(
                "/v1/outlets/{outlet_id}/status-requests",
                handle(gateway.status_request),
                methods=["POST"],
            ),
            Route("/v1/outlets/{outlet_id}/usage", handle(gateway.usage), methods=["GET"]),
            Route("/openapi.json", spec, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed, Exception: internal},
        lifespan=lifespan,
    )

"""Webhooks to partners: the outbox table, and a deliverer that never loses or reorders one.

Producers call ``charging.outbox.enqueue`` inside the transaction that records the fact
(a charge started, the current rose, …), so an event exists exactly when its fact does.
The deliverer:

* wakes on NOTIFY from the outbox (``SETTLE_S`` after a commit) or when a retry is due;
* posts each event as JSON to the client's webhook URL, signed as the Standard Webhooks
  specification says, so a partner's off-the-shelf verifier accepts it: ``webhook-id``
  (the event's public id: de-duplicate on it), ``webhook-timestamp`` (Unix seconds) and
  ``webhook-signature: v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``, where
  the key is the base64 part of the client's ``whsec_…`` secret. While a rotated secret
  is still honoured, the header carries one signature per secret, space-separated;
* counts any 2xx as delivered; anything else (an error status, a refused connection, a
  timeout) is retried with exponential backoff and jitter, up to ``GIVE_UP_AFTER`` (72 h);
* delivers one charge's events strictly in order: an event waits while an earlier one of
  the same charge is undelivered. Different charges do not wait for each other;
* gives each client its own lane (``_Lane``): its own connection pool, a few posts at
  once, each cut off after ``timeout_s``, and a bounded number of events taken on. A
  partner whose endpoint hangs delays only its own webhooks;
* stops delivering to a disabled client, and refuses to post to a URL whose host is (or
  resolves to) a loopback, private, link-local or otherwise internal address unless the
  gateway allows it (``webhook_allow_private``): a partner's URL must not make the cloud
  fetch from inside its own network.

State lives in the table, so a restarted gateway carries on where it stopped; a delivery
that succeeded just before a crash may be repeated, which ``Webhook-Id`` makes harmless.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import logging
import random
import secrets
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx2
import psycopg

from cloud_gateway.destinations import destination_problem

log = logging.getLogger(__name__)

GIVE_UP_AFTER = timedelta(hours=72)
FIRST_RETRY_S = 1.0
#: How long the deliverer lets a notification settle before it looks for due events. The
#: commit that notified it is usually an API call's, whose answer is still on its way out
#: of this process: that answer goes first (bench.command_rtt: p50 about 2.5 ms lower on
#: 2 cores), and events committed together go out in one scan.
SETTLE_S = 0.02
MAX_RETRY_S = 600.0


SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key a ``whsec_…`` secret stands for (its base64 part, decoded)."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("a webhook secret starts with whsec_")
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"a webhook secret is base64 after whsec_ ({exc})") from None


def sign(secret: str, event_id: str, timestamp: int, body: bytes) -> str:
    """One signature, ``v1,<base64>``, over ``{id}.{timestamp}.{body}``."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    mac = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def signature_header(secrets_: Sequence[str], event_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    return " ".join(sign(secret, event_id, timestamp, body) for secret in secrets_)


def verify(secret: str, headers: dict[str, str], body: bytes, *, tolerance_s: int = 300) -> bool:
    """What a partner runs on receipt (docs/partner-api.md): a fresh timestamp and one
    ``v1`` signature made with ``secret``. The tests check the same with the
    ``standardwebhooks`` package."""
    try:
        timestamp = int(headers["webhook-timestamp"])
        expected = sign(secret, headers["webhook-id"], timestamp, body)
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance_s:
        return False
    offered = headers.get("webhook-signature", "").split(" ")
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


def backoff_s(attempts: int, first: float = FIRST_RETRY_S, cap: float = MAX_RETRY_S) -> float:
    """Delay before retry ``attempts`` (1, 2, …): doubling, capped, with jitter."""
    ceiling = min(cap, first * 2 ** (attempts - 1))
    return random.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class _Due:
    event_id: int
    public_id: str
    charge_id: str | None
    body: bytes
    url: str | None
    #: The client's secret, then a rotated one while it is still honoured.
    secrets: tuple[str, ...]
    attempts: int
    created_at: float


_DUE = """
SELECT o.event_id, o.public_id, o.charge_id, o.body::text, c.webhook_url,
       array_remove(ARRAY[c.webhook_secret, CASE WHEN c.previous_webhook_secret_until > now()
                                                 THEN c.previous_webhook_secret END], NULL),
       o.attempts, extract(epoch FROM o.created_at)::float8, o.client_id
FROM webhook_outbox o JOIN oauth_clients c USING (client_id)
WHERE o.delivered_at IS NULL AND o.gave_up_at IS NULL AND o.next_attempt_at <= now()
  AND c.disabled_at IS NULL
  AND NOT o.event_id = ANY(%(in_flight)s) AND NOT o.client_id = ANY(%(full)s)
  AND NOT EXISTS (
      SELECT 1 FROM webhook_outbox p
      WHERE p.charge_id = o.charge_id AND p.event_id < o.event_id
        AND p.delivered_at IS NULL AND p.gave_up_at IS NULL)
ORDER BY o.event_id
LIMIT %(batch)s
"""

#: Seconds until the next event that ``_DUE`` could return comes due.
#: The outbox's backlog for the metrics (webhook_outbox_due covers it).
_WAITING = "SELECT count(*) FROM webhook_outbox WHERE delivered_at IS NULL AND gave_up_at IS NULL"
WAITING_EVERY_S = 10.0

_NEXT_DUE = """
SELECT extract(epoch FROM min(o.next_attempt_at) - now())::float8
FROM webhook_outbox o JOIN oauth_clients c USING (client_id)
WHERE o.delivered_at IS NULL AND o.gave_up_at IS NULL AND c.disabled_at IS NULL
  AND NOT o.event_id = ANY(%(in_flight)s) AND NOT o.client_id = ANY(%(full)s)
"""


class _Lane:
    """One client's deliveries: its own connection pool, at most ``concurrency`` posts at
    once, each bounded in time, and at most ``QUEUED`` events taken on. A client whose
    endpoint hangs fills its own lane; the others never wait for it."""

    QUEUED_PER_POST = 8

    def __init__(self, concurrency: int, timeout_s: float) -> None:
        self.posts = asyncio.Semaphore(concurrency)
        self.capacity = concurrency * self.QUEUED_PER_POST
        self.timeout_s = timeout_s
        self.taken = 0  # events handed to this lane and not yet recorded
        self.http = httpx2.AsyncClient(
            timeout=httpx2.Timeout(timeout_s, connect=min(3.0, timeout_s)),
            limits=httpx2.Limits(
                max_connections=concurrency, max_keepalive_connections=concurrency
            ),
            follow_redirects=False,
        )

    @property
    def full(self) -> bool:
        return self.taken >= self.capacity


class Deliverer:
    """Delivers due events, each client in its own lane (see ``_Lane``)."""

    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 5.0,
        concurrency: int = 4,
        batch: int = 200,
        first_retry_s: float = FIRST_RETRY_S,
        max_retry_s: float = MAX_RETRY_S,
        allow_private: bool = False,
    ) -> None:
        self.url = url
        self.timeout_s, self.concurrency = timeout_s, concurrency
        self.batch = batch
        self.first_retry_s, self.max_retry_s = first_retry_s, max_retry_s
        self.allow_private = allow_private
        self.delivered = 0
        self.failed_attempts = 0
        self.given_up = 0
        #: Events not yet delivered (nor given up), counted at most every WAITING_EVERY_S.
        self.waiting: int | None = None
        self._waiting_counted = 0.0
        self._lanes: dict[str, _Lane] = {}
        self._in_flight: set[int] = set()

    async def run(self) -> None:
        """Deliver until cancelled; survives database outages. The scanning connection
        only finds due events and hands them to lanes; lanes record outcomes on a second
        connection, and each record wakes the scanner (for the next event of a charge)."""
        while True:
            try:
                await self._run_connected()
            # The lanes' TaskGroup hands on the scanner's error inside an ExceptionGroup.
            except* psycopg.Error as lost:
                log.warning(
                    "webhook deliverer lost the database (%s); retrying", lost.exceptions[0]
                )
                self._in_flight.clear()
                for lane in self._lanes.values():
                    lane.taken = 0
                await asyncio.sleep(2)

    async def _run_connected(self) -> None:
        async with (
            await psycopg.AsyncConnection.connect(self.url, autocommit=True) as scan,
            await psycopg.AsyncConnection.connect(self.url, autocommit=True) as record,
            asyncio.TaskGroup() as lanes,
        ):
            await scan.execute("LISTEN chargeline_outbox")
            # A client enabled again (or given a webhook URL) has events due.
            await scan.execute("LISTEN chargeline_clients")
            while True:
                await self._dispatch_due(scan, record, lanes)
                await self._wait(scan)

    def _exclusions(self) -> dict[str, Any]:
        return {
            "in_flight": list(self._in_flight),
            "full": [client for client, lane in self._lanes.items() if lane.full],
        }

    @property
    def in_flight(self) -> int:
        """Events handed to the lanes and not yet recorded."""
        return sum(lane.taken for lane in self._lanes.values())

    async def _wait(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if time.monotonic() - self._waiting_counted >= WAITING_EVERY_S:
            count = await (await conn.execute(_WAITING)).fetchone()
            self.waiting = int(count[0]) if count else 0
            self._waiting_counted = time.monotonic()
        cur = await conn.execute(_NEXT_DUE, self._exclusions())
        row = await cur.fetchone()
        due_in = 30.0 if row is None or row[0] is None else max(0.05, float(row[0]))
        async for _ in conn.notifies(timeout=min(due_in, 30.0), stop_after=1):
            await asyncio.sleep(SETTLE_S)

    async def _dispatch_due(
        self,
        scan: psycopg.AsyncConnection[Any],
        record: psycopg.AsyncConnection[Any],
        lanes: asyncio.TaskGroup,
    ) -> None:
        cur = await scan.execute(_DUE, {**self._exclusions(), "batch": self.batch})
        due = [
            (r[8], _Due(r[0], r[1], r[2], r[3].encode(), r[4], tuple(r[5]), r[6], r[7]))
            for r in await cur.fetchall()
        ]
        by_charge: dict[tuple[str, str], list[_Due]] = defaultdict(list)
        for client_id, event in due:
            by_charge[client_id, event.charge_id or event.public_id].append(event)
        for (client_id, _), events in by_charge.items():
            lane = self._lanes.get(client_id)
            if lane is None:
                lane = self._lanes[client_id] = _Lane(self.concurrency, self.timeout_s)
            lane.taken += len(events)
            self._in_flight.update(e.event_id for e in events)
            lanes.create_task(self._deliver_in_order(lane, events, record))

    async def _deliver_in_order(
        self, lane: _Lane, events: list[_Due], record: psycopg.AsyncConnection[Any]
    ) -> None:
        """Post one charge's due events in order, stopping at the first failure; record
        each outcome. Whatever happens, the events leave the lane and the in-flight set
        (an outcome not recorded is delivered again: ``webhook-id`` makes that harmless)."""
        try:
            for event in events:
                error = await self._post(lane, event)
                await self._record(record, event, error)
                if error is not None:
                    break
            await record.execute("SELECT pg_notify('chargeline_outbox', '')")
        except Exception as exc:  # a lane must never take the deliverer down
            if isinstance(exc, psycopg.Error):
                log.warning("webhook outcome not recorded (%s); it will be retried", exc)
            else:
                log.exception("webhook delivery failed unexpectedly")
        finally:
            lane.taken -= len(events)
            self._in_flight.difference_update(e.event_id for e in events)

    async def _post(self, lane: _Lane, event: _Due) -> str | None:
        if not event.url:
            return "the client has no webhook URL"
        refusal = await destination_problem(event.url, allow_private=self.allow_private)
        if refusal is not None:
            return refusal
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": event.public_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature_header(
                event.secrets, event.public_id, timestamp, event.body
            ),
        }
        try:
            async with lane.posts, asyncio.timeout(lane.timeout_s):
                response = await lane.http.post(event.url, content=event.body, headers=headers)
        except TimeoutError:
            return f"no answer within {lane.timeout_s:g} s"
        except httpx2.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

    async def _record(
        self, conn: psycopg.AsyncConnection[Any], event: _Due, error: str | None
    ) -> None:
        if error is None:
            self.delivered += 1
            await conn.execute(
                "UPDATE webhook_outbox SET delivered_at = now(), attempts = attempts + 1,"
                " last_error = NULL WHERE event_id = %s",
                (event.event_id,),
            )
            return
        self.failed_attempts += 1
        attempts = event.attempts + 1
        give_up = time.time() - event.created_at > GIVE_UP_AFTER.total_seconds()
        self.given_up += give_up
        log.warning(
            "webhook %s attempt %d failed (%s)%s",
            event.public_id,
            attempts,
            error,
            "; giving up after 72 h" if give_up else "",
        )
        await conn.execute(
            "UPDATE webhook_outbox SET attempts = %s, last_error = %s,"
            " next_attempt_at = now() + make_interval(secs => %s),"
            " gave_up_at = CASE WHEN %s THEN now() END WHERE event_id = %s",
            (
                attempts,
                error,
                backoff_s(attempts, self.first_retry_s, self.max_retry_s),
                give_up,
                event.event_id,
            ),
        )

    async def aclose(self) -> None:
        for lane in self._lanes.values():
            with contextlib.suppress(Exception):
                await lane.http.aclose()
        self._lanes.clear()

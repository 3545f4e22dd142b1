"""The simulated partner (the WeCharge app's server): a real OAuth2 client of the gateway
with a real webhook receiver.

``Partner`` calls the partner API with a token from the authorization server (authlib
fetches and renews it) and receives webhooks on its own HTTP server, verifying each
signature with the client's webhook secret as docs/partner-api.md shows. Whoever waits for
an event (a resident waiting for their charge to stop) awaits ``Partner.next_event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import uvicorn
from authlib.integrations.httpx_client import AsyncOAuth2Client
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cloud_gateway.clients import NewClient
from cloud_gateway.webhooks import verify
from kernel.times import utc

Event = dict[str, Any]
CALL_ATTEMPTS = 4  # an API call whose answer was lost is sent this many times in all


@dataclass
class Tally:
    """What the partner saw, for the live view and the summary."""

    started: int = 0  # starts answered with the breaker ON
    pending: int = 0  # starts answered 202 (the result came by webhook)
    refused: Counter[str] = field(default_factory=Counter)  # API problems by type
    webhooks: Counter[str] = field(default_factory=Counter)  # verified, by type
    bad_signatures: int = 0
    stopped_wh: list[float] = field(default_factory=list)  # per charge.stopped
    #: Charges stopped without energy after they waited (paused before the car drew).
    stopped_waiting_without_energy: int = 0
    #: Charges that waited for room at some point (a charge.paused).
    waited: set[str] = field(default_factory=set)
    #: Charges that started, and those whose current rose.
    started_ids: set[str] = field(default_factory=set)
    rose: set[str] = field(default_factory=set)
    #: Why charges ended: charge.stopped reasons ("over-current trip", …) and, prefixed
    #: "failed: ", charge.failed reasons.
    endings: Counter[str] = field(default_factory=Counter)
    start_ms: list[float] = field(default_factory=list)  # start call → answer, breaker ON
    rise_ms: list[float] = field(default_factory=list)  # start call → current-rise webhook
    feed: list[str] = field(default_factory=list)  # latest lines for the view
    said: int = 0  # lines said so far, the ones dropped from ``feed`` included

    def say(self, line: str) -> None:
        self.feed.append(f"{time.strftime('%H:%M:%S')} {line}")
        self.said += 1
        del self.feed[:-200]


class _Server(uvicorn.Server):
    """uvicorn inside the demo's event loop: signals stay with the demo's runner."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Partner:
    def __init__(
        self,
        client: NewClient,
        *,
        api: str,
        token_url: str,
        port: int,
        tally: Tally,
        now: Callable[[], float],
    ) -> None:
        """``now``: the installation's clock (accelerated in the demo), for end times."""
        self.client = client
        self.now = now
        self.api = api
        self.token_url = token_url
        self.port = port
        self.tally = tally
        self._seen: set[str] = set()
        self._waiting: list[tuple[Callable[[Event], bool], asyncio.Future[Event]]] = []
        self._started_at: dict[str, float] = {}  # charge id → monotonic time of its start call
        self.oauth: AsyncOAuth2Client | None = None

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Partner]:
        app = Starlette(routes=[Route("/hooks", self._hook, methods=["POST"])])
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False
        )
        server = _Server(config)
        serving = asyncio.create_task(server.serve(), name="partner-webhooks")
        async with AsyncOAuth2Client(
            self.client.client_id,
            self.client.client_secret,
            token_endpoint=self.token_url,
            timeout=10,
        ) as oauth:
            await oauth.fetch_token(grant_type="client_credentials")
            self.oauth = oauth
            try:
                yield self
            finally:
                self.oauth = None
                server.should_exit = True
                await serving

    # --- calls ---------------------------------------------------------------------------
    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One API call; the response (authlib renews the token when it expires).

        A call whose answer was lost (a timeout, a dropped connection) is sent again, as an
        app would: starts and stops are idempotent on the charge id, so a repeated call
        answers with the same charge. The last attempt's error is raised.
        """
        assert self.oauth is not None, "use `async with partner.running()`"
        attempt = 1
        while True:
            try:
                return await self.oauth.request(method, f"{self.api}{path}", json=body)
            except httpx2.TransportError as exc:
                if attempt == CALL_ATTEMPTS:
                    raise
                self.tally.say(f"{method} {path}: {exc!r}; sending it again")
                await asyncio.sleep(attempt)
                attempt += 1

    async def start(self, outlet_id: str, charge_id: str, end_at: float | None) -> str:
        """Scan → start; the charge's state as answered, or ``refused: …``."""
        body: dict[str, Any] = {"outlet_id": outlet_id, "charge_id": charge_id}
        if end_at is not None:
            body["end_at"] = utc(end_at).isoformat()
        began = time.monotonic()
        self._started_at[charge_id] = began
        response: httpx2.Response = await self.call("POST", "/v1/charges", body)
        took_ms = (time.monotonic() - began) * 1000
        if response.status_code in (200, 201, 202):
            state = str(response.json()["state"])
            # A repeated start (its first answer was lost) answers with the charge as it
            # is now: drawing already, or even ended, after the breaker went ON.
            if state in ("on", "drawing", "stopping", "stopped"):
                self.tally.started += 1
                self.tally.start_ms.append(took_ms)
            elif response.status_code == 202:
                self.tally.pending += 1
            return state
        problem = response.json().get("type", str(response.status_code))
        kind = problem.rsplit("/", 1)[-1]
        self.tally.refused[kind] += 1
        self.tally.say(f"{outlet_id}: start refused ({response.status_code} {kind})")
        return f"refused: {kind}"

    async def charge_state(self, charge_id: str) -> str | None:
        response: httpx2.Response = await self.call("GET", f"/v1/charges/{charge_id}")
        return str(response.json()["state"]) if response.status_code == 200 else None

    async def stop(self, charge_id: str) -> None:
        response: httpx2.Response = await self.call("POST", f"/v1/charges/{charge_id}/stop")
        if response.status_code != 200:
            self.tally.say(f"{charge_id}: stop answered {response.status_code}")

    async def status(self, outlet_id: str, *, within: float) -> Event | None:
        """Ask for a status notification and wait for it; its data (None if it never came)."""
        response: httpx2.Response = await self.call(
            "POST", f"/v1/outlets/{outlet_id}/status-requests"
        )
        if response.status_code != 202:
            return None
        request_id = response.json()["request_id"]
        with contextlib.suppress(TimeoutError):
            event = await self.next_event(
                lambda e: e["type"] == "outlet.status" and e["data"]["request_id"] == request_id,
                within,
            )
            return dict(event["data"])
        return None

    # --- webhooks ------------------------------------------------------------------------
    async def next_event(self, match: Callable[[Event], bool], within: float) -> Event:
        """The next webhook that ``match``es, arriving within ``within`` seconds."""
        future: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        waiting = (match, future)
        self._waiting.append(waiting)
        try:
            return await asyncio.wait_for(future, within)
        finally:
            self._waiting.remove(waiting)

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        if not verify(self.client.webhook_secret or "", dict(request.headers), body):
            self.tally.bad_signatures += 1
            return Response(status_code=401)
        event: Event = json.loads(body)
        if event["id"] in self._seen:  # delivery is at least once
            return Response(status_code=200)
        self._seen.add(event["id"])
        self._note(event)
        for match, future in list(self._waiting):
            if not future.done() and match(event):
                future.set_result(event)
        return Response(status_code=200)

    def _note(self, event: Event) -> None:
        kind, data = event["type"], event["data"]
        tally = self.tally
        tally.webhooks[kind] += 1
        subject = data.get("outlet_id") or data.get("controller_id", "")
        charge = data.get("charge_id")
        if kind == "charge.current_rise":
            tally.rose.add(str(charge))
        if kind == "charge.current_rise" and charge in self._started_at:
            tally.rise_ms.append((time.monotonic() - self._started_at[charge]) * 1000)
            tally.say(f"{subject}: {charge} current rise ({data.get('current')})")
        elif kind == "charge.stopped":
            tally.stopped_wh.append(float(data["energy_wh"]))
            if data["energy_wh"] <= 0 and charge in tally.waited:
                tally.stopped_waiting_without_energy += 1
            tally.endings[str(data.get("reason"))] += 1
            tally.say(
                f"{subject}: {charge} stopped, {data['energy_wh'] / 1000:.2f} kWh"
                f" ({data.get('reason')})"
            )
        elif kind == "charge.failed":
            tally.endings[f"failed: {data.get('reason')}"] += 1
            tally.say(f"{subject}: {charge} failed ({data.get('reason')})")
        elif kind == "charge.started":
            tally.started_ids.add(str(charge))
            tally.say(f"{subject}: {charge} started")
        elif kind == "charge.paused":
            tally.waited.add(str(charge))
            expected = data.get("expected_start_at")
            when = (
                f", expected in {max(0.0, expected - self.now()) / 60:.0f} min" if expected else ""
            )
            tally.say(f"{subject}: {charge} {data['state']}: {data['reason']}{when}")
        elif kind == "charge.resumed":
            tally.say(f"{subject}: {charge} resumed")
        elif kind == "outlet.status":
            reading = data.get("reading") or {}
            tally.say(
                f"{subject}: status {reading.get('current_a', '?')} A,"
                f" breaker {'ON' if reading.get('breaker_on') else 'OFF'} ({data.get('source')})"
            )
        elif kind == "outlet.availability":
            tally.say(f"{subject}: {'available' if data['available'] else data['status']}")
        else:
            tally.say(f"{subject}: {kind} {data.get('reason', '')}".rstrip())

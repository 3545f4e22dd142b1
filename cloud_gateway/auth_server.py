"""The OAuth2 authorization server: client credentials → RFC 9068 JWT access tokens.

``POST /oauth2/token`` (client_secret_basic or client_secret_post), the public keys at
``/.well-known/jwks.json`` and RFC 8414 metadata at
``/.well-known/oauth-authorization-server``. authlib runs the grant; tokens are ES256,
``typ: at+jwt``, with ``iss``, ``aud``, ``sub``, ``client_id``, ``scope``, ``iat``, ``exp``
(≤ 15 minutes) and ``jti``, and the signing key's ``kid`` in the header. It shares only
the database (the clients table) with the API, which checks tokens through the JWKS alone.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import unquote

import psycopg
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import OAuth2Request
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from joserfc import jwt
from joserfc.jwk import ECKey
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from cloud_gateway import keys
from cloud_gateway.clients import (
    SCOPES,
    SELECT_ACTIVE,
    PartnerClient,
    from_rows,
    load_clients,
    watch,
)
from cloud_gateway.probe import auth_probe
from cloud_gateway.ratelimit import RateLimiter, retry_after
from cloud_gateway.request_ids import RequestIds
from cloud_gateway.settings import GatewaySettings
from kernel import ops, systemd

log = logging.getLogger(__name__)


class _TokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    def __init__(self, ring: keys.KeyRing, settings: GatewaySettings) -> None:
        super().__init__(
            issuer=settings.issuer,
            alg=keys.ALGORITHM,
            expires_generator=lambda client, grant_type: settings.token_ttl_s,
        )
        self.ring, self.audience = ring, settings.audience

    def get_jwks(self) -> ECKey:
        return self.ring.current()

    def get_audiences(self, client: Any, user: Any, scope: Any) -> str:
        return self.audience

    def access_token_generator(self, client: Any, grant_type: str, user: Any, scope: str) -> str:
        # authlib's generator leaves the key id out of the header; the API needs it to pick
        # the key during a rotation. Same claims, signed here with the kid set.
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "exp": now + self._get_expires_in(client, grant_type),
            "aud": self.audience,
            "sub": client.get_client_id(),
            "client_id": client.get_client_id(),
            "iat": now,
            "jti": self.get_jti(client, grant_type, user, scope),
            "scope": scope,
        }
        key = self.ring.current()  # a rotated key signs from the next token on
        header = {"alg": self.alg, "typ": "at+jwt", "kid": key.kid}
        return jwt.encode(header, claims, key)


class _Server(AuthorizationServer):  # type: ignore[misc]
    def __init__(self, clients: dict[str, PartnerClient]) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.clients = clients

    def query_client(self, client_id: str) -> PartnerClient | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        client_id = request.client.client_id
        log.info(
            "token issued to %s (scope %r)",
            client_id,
            token.get("scope"),
            extra={"client_id": client_id},
        )

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request  # built by the endpoint from Starlette's request

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> Response:
        return JSONResponse(body, status_code=status, headers=dict(headers))

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


class _ClientCredentials(ClientCredentialsGrant):  # type: ignore[misc]
    """authlib's grant allows only HTTP Basic by default; RFC 6749 §2.3.1 also allows the
    credentials in the form body, and the metadata says both work."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012


class _FormRequest(OAuth2Request):  # type: ignore[misc]
    """An OAuth2Request that also answers ``.form``: authlib's client_secret_post reads the
    credentials from there, and the base class raises NotImplementedError."""

    def __init__(self, request: Request, form: dict[str, str], url: str) -> None:
        # ``url``: the endpoint as the issuer publishes it, not as the Host header claims
        # (authlib refuses http:// unless the host is local, and behind a TLS proxy every
        # request arrives as plain http).
        super().__init__(request.method, url, headers=request.headers)
        self.payload = BasicOAuth2Payload(form)
        self._form = form

    @property
    def form(self) -> dict[str, str]:
        return self._form


def _credentials(request: Request, form: dict[str, str]) -> tuple[str, str] | None:
    """The (client id, secret) a token request presents: HTTP Basic, else the form."""
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        with contextlib.suppress(ValueError, UnicodeDecodeError):
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            return unquote(client_id), unquote(secret)
        return None
    if form.get("client_id") and form.get("client_secret"):
        return form["client_id"], form["client_secret"]
    return None


def _authenticated(server: _Server, request: Request, form: dict[str, str]) -> str | None:
    """The client id, if the request's credentials are right. Only an authenticated id
    may key a rate limit: one that is merely claimed (every token names its client)
    would let anyone spend another client's allowance."""
    presented = _credentials(request, form)
    if presented is None:
        return None
    client = server.clients.get(presented[0])
    return presented[0] if client is not None and client.check_client_secret(presented[1]) else None


async def _after_second_of(moment: float) -> None:
    """Wait until the whole second after ``moment`` (at most one second)."""
    target = math.floor(moment) + 1
    wait = target - time.time()
    if not 0 < wait <= 1:
        return
    while wait > 0:  # asyncio may wake a hair early (its clock's resolution): sleep again
        await asyncio.sleep(wait)
        wait = target - time.time()


#: RFC 6749 §5.2 ``invalid_client``, the same words whether the id is unknown or the
#: secret wrong, so the endpoint does not tell which client ids exist.
_INVALID_CLIENT = {
    "error": "invalid_client",
    "error_description": "client authentication failed (unknown client, wrong secret,"
    " or a disabled client)",
}


class _TokenEndpoint:
    """``POST /oauth2/token``: a bounded form, two rate limits (per source address for
    every request, so a stranger spends only its own address's allowance; per client once
    its credentials are right), one answer for every failed authentication, and authlib's
    client-credentials grant for the rest."""

    def __init__(self, server: _Server, settings: GatewaySettings) -> None:
        self.server = server
        self.max_body_bytes = settings.max_body_bytes
        self.url = f"{settings.issuer}/oauth2/token"
        self.by_source = RateLimiter(settings.token_source_rate_per_s, settings.token_source_burst)
        self.by_client = RateLimiter(settings.token_rate_per_s, settings.token_burst)
        #: Answers by OAuth2 error code (``issued`` for a token), for the metrics.
        self.answers: collections.Counter[str] = collections.Counter()

    async def handle(self, request: Request) -> Response:
        answer = await self._handle(request)
        self.answers[_error_of(answer)] += 1
        return answer

    async def _handle(self, request: Request) -> Response:
        form = await self._form(request)
        if isinstance(form, Response):
            return form
        source = request.client.host if request.client else "?"
        wait = self.by_source.take(source)
        client_id = _authenticated(self.server, request, form) if not wait else None
        if client_id is not None:
            wait = self.by_client.take(client_id)
            # Tokens carry iat in whole seconds, and the API refuses those issued at or
            # before the second the client's credentials last changed: a token asked for
            # within that second is issued at the next one, so it is not born void.
            await _after_second_of(self.server.clients[client_id].tokens_valid_after)
        if wait:
            return JSONResponse(
                {"error": "slow_down", "error_description": "too many token requests"},
                status_code=429,
                headers={"Retry-After": retry_after(wait), "Cache-Control": "no-store"},
            )
        response = self._answer(request, form, client_id)
        response.headers["Cache-Control"] = "no-store"
        return response

    async def _form(self, request: Request) -> dict[str, str] | Response:
        """The form's fields, or the answer to a request too large or cut short."""
        # A token request is a few hundred bytes; a larger body is refused before it is read.
        declared = request.headers.get("content-length", "")
        if not declared.isdigit() or int(declared) > self.max_body_bytes:
            return JSONResponse(
                {
                    "error": "invalid_request",
                    "error_description": "a token request needs a Content-Length of at most"
                    f" {self.max_body_bytes} bytes",
                },
                status_code=413 if declared.isdigit() else 411,
            )
        try:
            return {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        except ClientDisconnect:  # cut off (the request deadline) or gone: nobody to answer
            return Response(status_code=400)

    def _answer(self, request: Request, form: dict[str, str], client_id: str | None) -> Response:
        if client_id is None and _credentials(request, form) is not None:
            # RFC 6749 §5.2: 401 with a challenge when HTTP Basic was tried, else 400.
            basic = request.headers.get("authorization", "").lower().startswith("basic ")
            return JSONResponse(
                _INVALID_CLIENT,
                status_code=401 if basic else 400,
                headers={"WWW-Authenticate": 'Basic realm="chargeline"'} if basic else None,
            )
        answer: Response = self.server.create_token_response(_FormRequest(request, form, self.url))
        return answer


#: The error codes a token answer may carry (RFC 6749 section 5.2, and slow_down for the
#: rate limits); anything else counts as ``other``, so the metric's labels stay few.
TOKEN_ERRORS = (
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "slow_down",
    "other",
)


def _error_of(answer: Response) -> str:
    if answer.status_code == 200:
        return "issued"
    try:
        error = json.loads(bytes(answer.body)).get("error")
    except (ValueError, AttributeError):
        error = None
    return error if error in TOKEN_ERRORS else "other"


def create_app(settings: GatewaySettings, database_url: str) -> Starlette:
    ring = keys.KeyRing(settings.data_dir / "keys")
    server = _Server({})
    server.register_grant(_ClientCredentials)
    server.register_token_generator("default", _TokenGenerator(ring, settings))
    token = _TokenEndpoint(server, settings)
    metadata = {
        "issuer": settings.issuer,
        "token_endpoint": token.url,
        "jwks_uri": f"{settings.issuer}/.well-known/jwks.json",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "scopes_supported": sorted(SCOPES),
    }

    async def keyset(request: Request) -> Response:
        # Short-lived in caches: after a rotation the API must find the new key here.
        return JSONResponse(ring.jwks(), headers={"Cache-Control": "max-age=60"})

    async def discovery(request: Request) -> Response:
        return JSONResponse(metadata)

    health = auth_probe(database_url, token.answers, TOKEN_ERRORS)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        with psycopg.connect(database_url) as conn:
            server.clients = load_clients(conn)
        log.info("authorization server for %s; %d clients", settings.issuer, len(server.clients))
        async with (
            asyncio.TaskGroup() as tasks,  # the watcher ends, awaited, with the app
            ops.served(settings.ops_bind, health),
        ):
            watcher = tasks.create_task(_watch_clients(database_url, server))
            # READY=1 once uvicorn listens, which it does after this startup returns.
            announcer = tasks.create_task(
                systemd.announce(lambda: systemd.listening(settings.auth_bind))
            )
            try:
                yield
            finally:
                watcher.cancel()
                announcer.cancel()

    return Starlette(
        routes=[
            Route("/oauth2/token", token.handle, methods=["POST"]),
            Route("/.well-known/jwks.json", keyset),
            Route("/.well-known/oauth-authorization-server", discovery),
            *ops.health_routes(health),
        ],
        middleware=[Middleware(RequestIds)],
        lifespan=lifespan,
    )


async def _watch_clients(url: str, server: _Server) -> None:
    """Reload clients when the table changes (a new client, a revoked one)."""

    def load(rows: list[tuple[Any, ...]]) -> None:
        server.clients = from_rows(rows)

    await watch(url, SELECT_ACTIVE, load, what="authorization server clients")

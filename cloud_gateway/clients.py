"""Partner applications registered as OAuth2 clients (``chargeline clients add``).

The secret is 256 random bits, shown once; the database keeps its SHA-256 only. A slow
password hash protects secrets people choose; for a random 256-bit secret a fast hash is
as safe and keeps the token endpoint fast.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from authlib.oauth2.rfc6749 import ClientMixin

from cloud_gateway.destinations import resolve_problem
from cloud_gateway.webhooks import new_secret as new_webhook_secret
from schemas.errors import InputError, NotFound

log = logging.getLogger(__name__)

#: What a partner may be allowed to do.
SCOPES = {
    "charges:write": "start and stop charges",
    "charges:read": "read charges",
    "outlets:read": "read outlet status and request status notifications",
    "usage:read": "read monthly usage",
    "sites:read": "find sites and read their outlets' availability and cap",
    "sites:write": "operator: set and remove a site's cap windows (load management)",
}


def _sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class PartnerClient(ClientMixin):  # type: ignore[misc]
    client_id: str
    name: str
    secret_sha256: bytes
    scopes: frozenset[str]
    webhook_url: str | None
    webhook_secret: str
    #: The API refuses this client's tokens issued at or before this epoch second.
    tokens_valid_after: float = 0.0

    # --- what authlib asks of a client ---------------------------------------------------
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> None:
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        """No scope asked: every scope granted to the client; else the granted subset."""
        if not scope:
            return " ".join(sorted(self.scopes))
        return " ".join(s for s in scope.split() if s in self.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return False

    def check_client_secret(self, client_secret: str) -> bool:
        return hmac.compare_digest(_sha256(client_secret), self.secret_sha256)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type == "client_credentials"


@dataclass(frozen=True)
class NewClient:
    client_id: str
    client_secret: str
    webhook_secret: str


def add_client(
    url: str,
    name: str,
    scopes: list[str],
    webhook_url: str | None = None,
    *,
    allow_private: bool = False,
) -> NewClient:
    """Register a partner. ``allow_private`` lets its webhook URL point inside the
    cloud's network (``destinations``): a closed network or a test, never the internet."""
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown:
        raise InputError(f"unknown scopes {unknown}; known: {sorted(SCOPES)}")
    if not scopes:
        raise InputError("a client needs at least one scope")
    if webhook_url is not None:
        problem = resolve_problem(webhook_url, allow_private=allow_private)
        if problem is not None:
            raise InputError(f"the webhook URL {problem}")
    new = NewClient(
        client_id=f"cl_{secrets.token_hex(8)}",
        client_secret=secrets.token_urlsafe(32),
        webhook_secret=new_webhook_secret(),
    )
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO oauth_clients (client_id, name, secret_sha256, scopes, webhook_url,"
            " webhook_secret) VALUES (%s, %s, %s, %s, %s, %s)",
            (
                new.client_id,
                name,
                _sha256(new.client_secret),
                sorted(set(scopes)),
                webhook_url,
                new.webhook_secret,
            ),
        )
    return new


#: The clients that may get tokens.
SELECT_ACTIVE = (
    "SELECT client_id, name, secret_sha256, scopes, webhook_url, '' AS webhook_secret,"
    " extract(epoch FROM tokens_valid_after)::float8"
    " FROM oauth_clients WHERE disabled_at IS NULL"
)  # the authorization server's view: no webhook secrets (its role may not read them)


def from_rows(rows: list[tuple[Any, ...]]) -> dict[str, PartnerClient]:
    return {
        r[0]: PartnerClient(r[0], r[1], bytes(r[2]), frozenset(r[3]), r[4], r[5], float(r[6]))
        for r in rows
    }


def load_clients(conn: psycopg.Connection[Any]) -> dict[str, PartnerClient]:
    return from_rows(conn.execute(SELECT_ACTIVE).fetchall())


@dataclass(frozen=True)
class ClientInfo:
    """What ``chargeline clients list`` shows of a client (no secrets)."""

    client_id: str
    name: str
    scopes: list[str]
    webhook_url: str | None
    created_at: Any
    disabled_at: Any
    removed_at: Any

    @property
    def state(self) -> str:
        if self.removed_at is not None:
            return f"removed {self.removed_at:%Y-%m-%d %H:%M}"
        if self.disabled_at is not None:
            return f"disabled {self.disabled_at:%Y-%m-%d %H:%M}"
        return "active"


class UnknownClient(NotFound):
    """No client with that id, or none in the state the change needs."""

    def __init__(self, client_id: str, why: str = "") -> None:
        super().__init__(f"no client {client_id!r}{why}")
        self.client_id = client_id


def list_clients(url: str) -> list[ClientInfo]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT client_id, name, scopes, webhook_url, created_at, disabled_at, removed_at"
            " FROM oauth_clients ORDER BY created_at, client_id"
        ).fetchall()
    return [ClientInfo(*row) for row in rows]


def rotate_client_secret(url: str, client_id: str) -> str:
    """A new client secret. The old one stops getting tokens at once, and the tokens it
    got stop working within seconds (``tokens_valid_after``)."""
    secret = secrets.token_urlsafe(32)
    _update(
        url,
        client_id,
        "secret_sha256 = %s, tokens_valid_after = now()",
        _sha256(secret),
        state="disabled_at IS NULL",
        why=" that is active",
    )
    return secret


def rotate_webhook_secret(url: str, client_id: str, *, overlap_s: float) -> str:
    """A new webhook secret. For ``overlap_s`` the old one signs beside it (two signatures
    in ``webhook-signature``), so the partner can switch its verifier at leisure."""
    secret = new_webhook_secret()
    _update(
        url,
        client_id,
        "previous_webhook_secret = webhook_secret,"
        " previous_webhook_secret_until = now() + make_interval(secs => %s),"
        " webhook_secret = %s",
        overlap_s,
        secret,
        state="removed_at IS NULL",
        why=" that is not removed",
    )
    return secret


def disable_client(url: str, client_id: str) -> None:
    """No new tokens, every token already issued refused within seconds, no webhooks
    (they wait, and go out if the client is enabled again within 72 h). Its charges run
    on and stay stoppable by the operator (``chargeline charges stop``)."""
    _update(
        url,
        client_id,
        "disabled_at = now(), tokens_valid_after = now()",
        state="disabled_at IS NULL",
        why=" that is active",
    )


def enable_client(url: str, client_id: str) -> None:
    """Undo ``disable_client``: the client gets tokens again (the ones it had stay void)."""
    _update(
        url,
        client_id,
        "disabled_at = NULL",
        state="disabled_at IS NOT NULL AND removed_at IS NULL",
        why=" that is disabled (a removed client cannot come back)",
    )


def remove_client(url: str, client_id: str) -> None:
    """Disable a client for good: no tokens, no webhooks. Its charges stay on record."""
    _update(
        url,
        client_id,
        "disabled_at = coalesce(disabled_at, now()), removed_at = now(), webhook_url = NULL,"
        " tokens_valid_after = now()",
        state="removed_at IS NULL",
        why=" that is not removed already",
    )


def _update(url: str, client_id: str, assignments: str, *values: Any, state: str, why: str) -> None:
    """``UPDATE … SET assignments`` on one client in ``state``, or ``UnknownClient``."""
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            f"UPDATE oauth_clients SET {assignments}"  # assignments, state: our constants
            f" WHERE client_id = %s AND {state}",
            (*values, client_id),
        )
        if cur.rowcount != 1:
            raise UnknownClient(client_id, why)


async def watch(
    url: str, query: str, apply: Callable[[list[tuple[Any, ...]]], None], *, what: str
) -> None:
    """Hand ``query``'s rows to ``apply`` now and whenever the clients table changes (its
    ``chargeline_clients`` notification, and every 30 s as a safety net), until
    cancelled; through a database outage the last rows stay in force."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
                await conn.execute("LISTEN chargeline_clients")
                while True:
                    cur = await conn.execute(query)
                    apply(await cur.fetchall())
                    async for _ in conn.notifies(timeout=30, stop_after=1):
                        pass
        except psycopg.Error as exc:
            log.warning("%s: database unavailable (%s); retrying", what, exc)
            await asyncio.sleep(2)

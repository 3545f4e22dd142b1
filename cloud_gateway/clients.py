"""Partner applications registered as OAuth2 clients (``chargeline clients add``).

The secret is 256 random bits, shown once; the database keeps its SHA-256 only. A slow
password hash protects secrets people choose; for a random 256-bit secret a fast hash is
as safe and keeps the token endpoint fast.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

import psycopg
from authlib.oauth2.rfc6749 import ClientMixin

from cloud_gateway.destinations import resolve_problem
from cloud_gateway.webhooks import new_secret as new_webhook_secret

#: What a partner may be allowed to do.
SCOPES = {
    "charges:write": "start and stop charges",
    "charges:read": "read charges",
    "outlets:read": "read outlet status and request status notifications",
    "usage:read": "read monthly usage",
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
        raise ValueError(f"unknown scopes {unknown}; known: {sorted(SCOPES)}")
    if not scopes:
        raise ValueError("a client needs at least one scope")
    if webhook_url is not None:
        problem = resolve_problem(webhook_url, allow_private=allow_private)
        if problem is not None:
            raise ValueError(f"the webhook URL {problem}")
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
    "SELECT client_id, name, secret_sha256, scopes, webhook_url, webhook_secret"
    " FROM oauth_clients WHERE disabled_at IS NULL"
)


def from_rows(rows: list[tuple[Any, ...]]) -> dict[str, PartnerClient]:
    return {r[0]: PartnerClient(r[0], r[1], bytes(r[2]), frozenset(r[3]), r[4], r[5]) for r in rows}


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


class UnknownClient(LookupError):
    """No client with that id (or it was removed)."""

    def __init__(self, client_id: str) -> None:
        super().__init__(f"no client {client_id!r}")
        self.client_id = client_id


def list_clients(url: str) -> list[ClientInfo]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT client_id, name, scopes, webhook_url, created_at, disabled_at"
            " FROM oauth_clients ORDER BY created_at, client_id"
        ).fetchall()
    return [ClientInfo(*row) for row in rows]


def rotate_client_secret(url: str, client_id: str) -> str:
    """A new client secret; the old one stops working at once (tokens already issued live
    out their 15 minutes at most)."""
    secret = secrets.token_urlsafe(32)
    _update_active(url, client_id, "secret_sha256 = %s", _sha256(secret))
    return secret


def rotate_webhook_secret(url: str, client_id: str, *, overlap_s: float) -> str:
    """A new webhook secret. For ``overlap_s`` the old one signs beside it (two signatures
    in ``webhook-signature``), so the partner can switch its verifier at leisure."""
    secret = new_webhook_secret()
    _update_active(
        url,
        client_id,
        "previous_webhook_secret = webhook_secret,"
        " previous_webhook_secret_until = now() + make_interval(secs => %s),"
        " webhook_secret = %s",
        overlap_s,
        secret,
    )
    return secret


def remove_client(url: str, client_id: str) -> None:
    """Disable a client: no more tokens, no more webhooks. Its charges stay on record."""
    _update_active(url, client_id, "disabled_at = now(), webhook_url = NULL")


def _update_active(url: str, client_id: str, assignments: str, *values: Any) -> None:
    """``UPDATE … SET assignments`` on one active client, or ``UnknownClient``."""
    with psycopg.connect(url) as conn:
        cur = conn.execute(
            f"UPDATE oauth_clients SET {assignments}"  # assignments: our own constants
            " WHERE client_id = %s AND disabled_at IS NULL",
            (*values, client_id),
        )
        if cur.rowcount != 1:
            raise UnknownClient(client_id)

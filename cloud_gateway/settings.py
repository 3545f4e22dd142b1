"""The authorization server's, the partner API's and the webhook deliverer's settings
(``chargeline auth``, ``chargeline gateway``, ``chargeline webhooks``)."""

from __future__ import annotations

from pydantic import Field

from kernel.settings import CommonSettings


class GatewaySettings(CommonSettings):
    auth_bind: str = Field(default="127.0.0.1:8001", description="authorization server host:port")
    api_bind: str = Field(default="127.0.0.1:8000", description="partner API host:port")
    issuer: str = Field(
        default="http://127.0.0.1:8001", description="the authorization server's public URL"
    )
    audience: str = Field(default="chargeline-api", description="the API's token audience")
    jwks_url: str | None = Field(default=None, description="unset: {issuer}/.well-known/jwks.json")
    token_ttl_s: int = Field(default=600, ge=30, le=900, description="access token lifetime")
    token_leeway_s: int = Field(default=30, ge=0, le=60, description="clock leeway on tokens")
    token_max_lifetime_s: int = Field(
        default=900,
        ge=30,
        le=3600,
        description="the API refuses tokens whose exp - iat exceeds this",
    )
    token_rate_per_s: float = Field(default=20.0, gt=0, description="token requests per client")
    token_burst: int = Field(default=40, ge=1)
    token_source_rate_per_s: float = Field(
        default=100.0, gt=0, description="token requests per source address (any client)"
    )
    token_source_burst: int = Field(default=200, ge=1)
    api_rate_per_s: float = Field(default=200.0, gt=0, description="API requests per client")
    api_burst: int = Field(default=400, ge=1)
    start_wait_s: float = Field(
        default=3.0, ge=0, le=30, description="how long a start waits for the breaker"
    )
    start_timeout_s: float = Field(
        default=60.0,
        ge=1,
        description="a start unanswered this long fails, and an OFF command cancels it",
    )
    max_body_bytes: int = Field(
        default=16 * 1024, ge=256, description="request bodies larger than this get 413"
    )
    max_charge_s: float = Field(
        default=24 * 3600, gt=0, description="default and longest charge (end_at - now)"
    )
    http_request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        le=300,
        description="a request must arrive in full (headers and body) this soon",
    )
    http_max_connections: int = Field(
        default=4096, ge=1, description="connections held at once, per server"
    )
    http_max_connections_per_address: int = Field(
        default=256,
        ge=1,
        description="connections from one source address, per server (behind a reverse"
        " proxy, every connection comes from the proxy: raise it)",
    )
    http_trusted_proxies: str = Field(
        default="127.0.0.1",
        description="addresses whose X-Forwarded-For names the real client (comma-separated;"
        " empty: none)",
    )
    gateway_deliver_webhooks: bool = Field(
        default=True,
        description="the gateway also delivers webhooks; false: `chargeline webhooks` does,"
        " with its own database role (the gateway's then cannot read webhook secrets)",
    )
    webhook_timeout_s: float = Field(
        default=5.0, gt=0, le=60, description="a webhook post unanswered this long failed"
    )
    webhook_concurrency: int = Field(
        default=4, ge=1, le=64, description="webhook posts in flight per client"
    )
    webhook_allow_private: bool = Field(
        default=False,
        description="allow webhook URLs on loopback, private or link-local addresses"
        " (a closed network or a test; never for partners on the internet)",
    )
    status_timeout_s: float = Field(
        default=30.0,
        ge=1,
        description="a status request the edge has not answered this long is answered"
        " from the outlet's last stored reading",
    )
    availability_min_gap_s: float = Field(
        default=30.0,
        ge=0,
        description="outlet.availability webhooks: at most one per outlet this often"
        " (changes in between are coalesced into the next)",
    )

    @property
    def jwks(self) -> str:
        return self.jwks_url or f"{self.issuer.rstrip('/')}/.well-known/jwks.json"

"""Whether a client's tokens still count: the API's side of revocation.

Tokens are checked through the published keys alone, so a token stays valid to the
signature check until it expires. ``Standing`` adds what the database says now: a
disabled or removed client's tokens are refused, and so is any token issued before the
client's ``tokens_valid_after`` (set when it is disabled, removed or its secret is
rotated). The gateway keeps every client's standing in memory and reloads it when the
``oauth_clients`` table notifies a change, so a revocation takes effect within seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import psycopg

from cloud_gateway import clients

_SELECT = (
    "SELECT client_id, disabled_at IS NULL,"
    " extract(epoch FROM tokens_valid_after)::float8 FROM oauth_clients"
)


@dataclass
class Standing:
    """client id → (active, tokens issued before this epoch second are void)."""

    clients: dict[str, tuple[bool, float]] = field(default_factory=dict)

    def refusal(self, client_id: str, issued_at: float) -> str | None:
        """Why a validly signed token of ``client_id`` issued at ``issued_at`` is refused
        now, or None. An id not known yet is looked up by the caller (``lookup``)."""
        known = self.clients.get(client_id)
        if known is None:
            return "the client is not registered"
        active, valid_after = known
        if not active:
            return "the client is disabled"
        # iat is in whole seconds: a token from the second of a rotation is void too.
        if issued_at <= valid_after:
            return "the token was issued before the client's credentials changed"
        return None

    def update(self, rows: list[tuple[Any, ...]]) -> None:
        for client_id, active, valid_after in rows:
            self.clients[client_id] = (bool(active), float(valid_after))

    def replace(self, rows: list[tuple[Any, ...]]) -> None:
        self.clients = {}
        self.update(rows)


async def lookup(conn: psycopg.AsyncConnection[Any], standing: Standing, client_id: str) -> None:
    """Load one client's standing (a client registered since the last reload)."""
    cur = await conn.execute(f"{_SELECT} WHERE client_id = %s", (client_id,))
    standing.update(await cur.fetchall())


async def watch(url: str, standing: Standing) -> None:
    """Keep ``standing`` current: load everything, then reload on each change."""
    await clients.watch(url, _SELECT, standing.replace, what="client standing")

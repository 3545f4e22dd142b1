"""Checking RFC 9068 access tokens at the API, through the published keys alone.

A token passes only if: its header names an allowed algorithm (ES256: ``none``, HMAC and
everything else are refused before any key is touched) and ``typ`` ``at+jwt``; its ``kid``
is in the authorization server's JWKS; the signature verifies; ``iss`` and ``aud`` are
ours; ``exp``, ``nbf`` and ``iat`` hold within the leeway, ``iat`` is present and the
lifetime ``exp - iat`` is at most ``max_lifetime_s`` (a token minted for years is
refused, whoever signed it); and its ``scope`` includes what the endpoint needs. Every
refusal says why, with any value taken from the token cut short (``logsafe.shown``).

The JWKS is fetched from ``jwks_url`` and kept for ``KEYS_MAX_AGE_S``; a token naming an
unknown key id makes it refetch, at most once every ``REFETCH_S`` (a caller arriving
inside that interval waits for it rather than failing: a key rotation causes no
refusals). A token whose signature has passed is remembered by its text together with
its key id, and the memory is emptied whenever the key set changes: a key withdrawn from
the JWKS withdraws the tokens it signed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import httpx2
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact

from cloud_gateway import keys
from kernel.logsafe import shown
from schemas.errors import Refused

ALLOWED_ALGORITHMS = [keys.ALGORITHM]


class TokenError(Refused):
    """A refused token: ``status`` 401 (``invalid_token``) or 403 (``insufficient_scope``)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def _invalid(description: str) -> TokenError:
    return TokenError(401, "invalid_token", description)


@dataclass(frozen=True)
class Caller:
    client_id: str
    scopes: frozenset[str]
    claims: dict[str, Any]


class TokenValidator:
    REFETCH_S = 5.0
    KEYS_MAX_AGE_S = 300.0
    #: Tokens whose signature has been verified, by their exact text: a partner sends the
    #: same token for minutes, and the signature check is most of a token check's cost.
    CACHE_SIZE = 10_000

    def __init__(
        self,
        *,
        issuer: str,
        audience: str,
        jwks_url: str,
        leeway_s: int,
        http: httpx2.AsyncClient,
        max_lifetime_s: int = 900,
    ) -> None:
        self.issuer, self.audience, self.jwks_url = issuer, audience, jwks_url
        self.leeway_s, self.http = leeway_s, http
        self.max_lifetime_s = max_lifetime_s
        self._keys: KeySet | None = None
        self._kids: frozenset[str] = frozenset()
        self._fetched_at = -1e9
        self._fetching = asyncio.Lock()
        self._verified: dict[str, dict[str, Any]] = {}

    async def check(self, authorization: str | None, scope: str) -> Caller:
        if not authorization or not authorization.lower().startswith("bearer "):
            raise _invalid("missing bearer token (Authorization: Bearer <token>)")
        token = authorization[7:].strip()
        if self._keys is not None and time.monotonic() - self._fetched_at > self.KEYS_MAX_AGE_S:
            await self._refetch()  # a withdrawn key is noticed even if no new one appears
        claims = self._verified.get(token)
        if claims is None:
            claims = await self._verify(token)
            if len(self._verified) >= self.CACHE_SIZE:
                self._verified.clear()
            self._verified[token] = claims
        self._check_claims(claims)  # times are checked on every call, cached or not
        granted = frozenset(str(claims.get("scope", "")).split())
        if scope not in granted:
            raise TokenError(403, "insufficient_scope", f"this call needs the {scope!r} scope")
        return Caller(str(claims["client_id"]), granted, claims)

    async def _verify(self, token: str) -> dict[str, Any]:
        """Header, key and signature; the claims of a token that passes."""
        try:
            header = extract_compact(token.encode()).protected
        except (JoseError, ValueError) as exc:
            raise _invalid(f"not a JWT: {exc}") from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise _invalid(f"algorithm {shown(alg)} is not accepted (only {ALLOWED_ALGORITHMS})")
        if str(header.get("typ", "")).lower() not in ("at+jwt", "application/at+jwt"):
            raise _invalid(f"token type {shown(header.get('typ'))} is not an access token (at+jwt)")
        keyset = await self._keyset(header.get("kid"))
        try:
            decoded = jwt.decode(token, keyset, algorithms=ALLOWED_ALGORITHMS)
        except JoseError as exc:
            raise _invalid(f"signature check failed: {exc.description or exc.error}") from None
        claims: dict[str, Any] = decoded.claims
        return claims

    def _check_claims(self, claims: dict[str, Any]) -> None:
        now, leeway = time.time(), self.leeway_s
        if claims.get("iss") != self.issuer:
            raise _invalid(f"issuer {claims.get('iss')!r} is not {self.issuer!r}")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        if self.audience not in audiences:
            raise _invalid(f"audience {aud!r} does not include {self.audience!r}")
        for name in ("exp", "iat", "client_id"):
            if name not in claims:
                raise _invalid(f"the {name!r} claim is missing")
        if not isinstance(claims["exp"], int | float) or claims["exp"] < now - leeway:
            raise _invalid("the token has expired")
        if not isinstance(claims["iat"], int | float):
            raise _invalid("the 'iat' claim is not a number")
        if claims["exp"] - claims["iat"] > self.max_lifetime_s:
            raise _invalid(
                f"the token's lifetime (exp - iat) exceeds {self.max_lifetime_s} s:"
                " tokens are short-lived"
            )
        for name in ("nbf", "iat"):
            value = claims.get(name)
            if value is not None and (not isinstance(value, int | float) or value > now + leeway):
                raise _invalid(f"the token is not valid yet ({name} is in the future)")

    async def _keyset(self, kid: object) -> KeySet:
        if self._keys is None or kid not in self._kids:
            await self._refetch(wait=True)
        assert self._keys is not None
        if kid not in self._kids:
            raise _invalid(f"unknown signing key {shown(kid)}")
        return self._keys

    async def _refetch(self, *, wait: bool = False) -> None:
        """Fetch the JWKS, at most once every ``REFETCH_S``. With ``wait``, a caller
        inside the interval waits for its end (a new key is being rolled out); without,
        it goes on with the keys it has. Verified tokens are forgotten when the key set
        changes."""
        async with self._fetching:
            since = time.monotonic() - self._fetched_at
            if since < self.REFETCH_S and self._keys is not None:
                if not wait:
                    return
                await asyncio.sleep(self.REFETCH_S - since)
            try:
                response = await self.http.get(self.jwks_url, timeout=5)
                response.raise_for_status()
                keys = KeySet.import_key_set(response.json())
            except (httpx2.HTTPError, ValueError, JoseError) as exc:
                self._fetched_at = time.monotonic()
                if self._keys is None:
                    raise TokenError(
                        503, "temporarily_unavailable", f"cannot fetch signing keys: {exc}"
                    ) from None
                return
            self._fetched_at = time.monotonic()
            kids = frozenset(str(k.kid) for k in keys.keys)
            if kids != self._kids:
                self._verified.clear()
            self._keys, self._kids = keys, kids

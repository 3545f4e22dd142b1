"""The authorization server as a real process, a partner using authlib's OAuth2 client, and
the API's token check refusing every kind of bad token for its own reason."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import pytest
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import OAuth2Client
from joserfc import jwt
from joserfc.jwk import ECKey

from cloud_gateway.clients import NewClient, add_client
from cloud_gateway.tokens import Caller, TokenError, TokenValidator
from tests.db import query
from tests.procs import Proc, free_port, wait_for, wait_port

pytestmark = pytest.mark.processes

AUDIENCE = "chargeline-api"


@dataclass
class AuthServer:
    url: str
    database: str
    data_dir: Path
    writer: NewClient  # charges:write charges:read
    reader: NewClient  # charges:read only

    @property
    def token_url(self) -> str:
        return f"{self.url}/oauth2/token"

    def signing_key(self) -> ECKey:
        return ECKey.import_key(json.loads((self.data_dir / "keys" / "signing.jwk").read_text()))

    def token_for(
        self, client: NewClient, method: str = "client_secret_basic", **kwargs: Any
    ) -> dict[str, Any]:
        with OAuth2Client(
            client.client_id, client.client_secret, token_endpoint_auth_method=method
        ) as oauth:
            token: dict[str, Any] = oauth.fetch_token(
                self.token_url, grant_type="client_credentials", **kwargs
            )
            return token

    def validator(self, http: httpx2.AsyncClient, leeway_s: int = 30) -> TokenValidator:
        """What the API runs, pointed at this server's keys."""
        return TokenValidator(
            issuer=self.url,
            audience=AUDIENCE,
            jwks_url=f"{self.url}/.well-known/jwks.json",
            leeway_s=leeway_s,
            http=http,
        )

    def check(self, token: str, scope: str = "charges:read") -> Caller:
        async def run() -> Caller:
            async with httpx2.AsyncClient() as http:
                return await self.validator(http).check(f"Bearer {token}", scope)

        return asyncio.run(run())


def auth_env(database: str, tmp_path: Path, port: int, **settings: str) -> dict[str, str]:
    """An authorization server's environment on ``port``, with ``settings`` beside."""
    return {
        "CHARGELINE_DATABASE_URL": database,
        "CHARGELINE_DATA_DIR": str(tmp_path / "data"),
        "CHARGELINE_AUTH_BIND": f"127.0.0.1:{port}",
        "CHARGELINE_ISSUER": f"http://127.0.0.1:{port}",
        **{f"CHARGELINE_{name.upper()}": value for name, value in settings.items()},
    }


@pytest.fixture
def auth(database: str, tmp_path: Path) -> Iterator[AuthServer]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    writer = add_client(database, "WeCharge", ["charges:write", "charges:read"], "http://x/hook")
    reader = add_client(database, "Reports", ["charges:read"])
    env = auth_env(
        database,
        tmp_path,
        port,
        # The client's limit trips well before the source's, however slow the machine: at
        # 0.5/s a client exhausts its 10 whenever its requests take under 2 s each.
        token_rate_per_s="0.5",
        token_burst="10",
        token_source_rate_per_s="50",
        token_source_burst="100",
    )
    proc = Proc("auth", ["auth"], env, tmp_path).start()
    wait_port(port, proc=proc)
    yield AuthServer(url, database, tmp_path / "data", writer, reader)


def forge(server: AuthServer, *, header: dict[str, Any] | None = None, **claims: Any) -> str:
    """A token signed with the server's real key, with chosen header fields and claims."""
    key = server.signing_key()
    now = int(time.time())
    body = {
        "iss": server.url,
        "aud": AUDIENCE,
        "sub": server.writer.client_id,
        "client_id": server.writer.client_id,
        "iat": now,
        "exp": now + 300,
        "jti": "forged",
        "scope": "charges:read",
        **claims,
    }
    body = {k: v for k, v in body.items() if v is not None}
    head = {"alg": "ES256", "typ": "at+jwt", "kid": key.kid, **(header or {})}
    return jwt.encode(head, body, key)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def refused(server: AuthServer, token: str, scope: str = "charges:read") -> TokenError:
    with pytest.raises(TokenError) as info:
        server.check(token, scope)
    return info.value


def test_partner_gets_an_rfc9068_token_that_the_api_accepts(auth: AuthServer) -> None:
    token = auth.token_for(auth.writer)
    assert token["token_type"].lower() == "bearer" and token["expires_in"] <= 900
    header = json.loads(base64.urlsafe_b64decode(token["access_token"].split(".")[0] + "=="))
    assert header["typ"] == "at+jwt" and header["alg"] == "ES256" and header["kid"]
    caller = auth.check(token["access_token"], "charges:write")
    assert caller.client_id == auth.writer.client_id
    assert caller.scopes == {"charges:write", "charges:read"}
    claims = caller.claims
    assert claims["iss"] == auth.url and claims["aud"] == AUDIENCE
    assert claims["sub"] == auth.writer.client_id and claims["jti"]
    assert 0 < claims["exp"] - claims["iat"] <= 900
    jwks = httpx2.get(f"{auth.url}/.well-known/jwks.json").json()
    assert [k["kid"] for k in jwks["keys"]] == [header["kid"]] and "d" not in jwks["keys"][0]
    meta = httpx2.get(f"{auth.url}/.well-known/oauth-authorization-server").json()
    assert meta["token_endpoint"] == auth.token_url and meta["issuer"] == auth.url


@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
def test_every_advertised_client_authentication_method_works(auth: AuthServer, method: str) -> None:
    """Each method the metadata lists (RFC 8414) gets a token through authlib's client."""
    meta = httpx2.get(f"{auth.url}/.well-known/oauth-authorization-server").json()
    assert method in meta["token_endpoint_auth_methods_supported"]
    token = auth.token_for(auth.writer, method)
    assert auth.check(token["access_token"]).client_id == auth.writer.client_id


def test_a_client_asking_for_less_gets_less_and_cannot_get_more(auth: AuthServer) -> None:
    token = auth.token_for(auth.writer, scope="charges:read")
    assert auth.check(token["access_token"]).scopes == {"charges:read"}
    reader = auth.token_for(auth.reader)
    error = refused(auth, reader["access_token"], "charges:write")
    assert (error.status, error.error) == (403, "insufficient_scope")
    assert "charges:write" in error.description


@pytest.mark.parametrize(
    ("secret", "client_id"),
    [("wrong-secret", None), (None, "cl_unknown0000000")],
    ids=["wrong secret", "unknown client"],
)
def test_bad_client_credentials_get_invalid_client(
    auth: AuthServer, secret: str | None, client_id: str | None
) -> None:
    response = httpx2.post(
        auth.token_url,
        data={"grant_type": "client_credentials"},
        auth=(client_id or auth.writer.client_id, secret or auth.writer.client_secret),
    )
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_an_oversized_token_request_is_refused_unread(auth: AuthServer) -> None:
    """10 MB posted to the token endpoint: 413 with an OAuth2 error, nothing parsed."""
    response = httpx2.post(
        auth.token_url,
        content=b"grant_type=client_credentials&pad=" + b"x" * (10 * 1024 * 1024),
        headers={"content-type": "application/x-www-form-urlencoded"},
        auth=(auth.writer.client_id, auth.writer.client_secret),
    )
    assert response.status_code == 413 and response.json()["error"] == "invalid_request"


def test_only_client_credentials_is_granted(auth: AuthServer) -> None:
    response = httpx2.post(
        auth.token_url,
        data={"grant_type": "password", "username": "a", "password": "b"},
        auth=(auth.writer.client_id, auth.writer.client_secret),
    )
    assert response.status_code == 400
    assert response.json()["error"] == "unsupported_grant_type"


def test_every_bad_token_is_refused_for_its_own_reason(auth: AuthServer) -> None:
    now = int(time.time())
    real = auth.token_for(auth.writer)["access_token"]
    head, body, signature = real.split(".")
    public_pem = auth.signing_key().as_pem(private=False)
    hs_head = b64(json.dumps({"alg": "HS256", "typ": "at+jwt", "kid": "x"}).encode())
    hs_mac = hmac.new(public_pem, f"{hs_head}.{body}".encode(), hashlib.sha256).digest()
    flipped = signature[:-4] + ("AAAA" if signature[-4:] != "AAAA" else "BBBB")
    cases = {
        "expired": (forge(auth, exp=now - 120, iat=now - 900), "expired"),
        "not yet valid": (forge(auth, nbf=now + 600), "not valid yet"),
        "issued in the future": (forge(auth, iat=now + 600), "not valid yet"),
        "wrong audience": (forge(auth, aud="someone-else"), "audience"),
        "wrong issuer": (forge(auth, iss="http://evil.example"), "issuer"),
        "alg none": (
            f"{b64(json.dumps({'alg': 'none', 'typ': 'at+jwt'}).encode())}.{body}.",
            "algorithm 'none'",
        ),
        "HS256 with the public key": (f"{hs_head}.{body}.{b64(hs_mac)}", "algorithm 'HS256'"),
        "tampered signature": (f"{head}.{body}.{flipped}", "signature"),
        "tampered claims": (f"{head}.{b64(b'{}')}.{signature}", "signature"),
        "wrong typ": (forge(auth, header={"typ": "JWT"}), "token type"),
        "unknown key": (forge(auth, header={"kid": "not-our-key"}), "unknown signing key"),
        "no client_id": (forge(auth, client_id=None), "client_id"),
        "not a JWT": ("hello", "not a JWT"),
    }
    for name, (token, reason) in cases.items():
        error = refused(auth, token)
        assert (error.status, error.error) == (401, "invalid_token"), name
        assert reason in error.description, f"{name}: {error.description}"
    assert forge(auth) and auth.check(forge(auth)).client_id == auth.writer.client_id


def test_token_endpoint_is_rate_limited_with_retry_after(auth: AuthServer) -> None:
    codes = []
    for _ in range(30):
        response = httpx2.post(
            auth.token_url,
            data={"grant_type": "client_credentials"},
            auth=(auth.reader.client_id, auth.reader.client_secret),
        )
        codes.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.json()["error"] == "slow_down"
            break
    assert codes[0] == 200 and codes[-1] == 429, codes
    other = httpx2.post(
        auth.token_url,
        data={"grant_type": "client_credentials"},
        auth=(auth.writer.client_id, auth.writer.client_secret),
    )
    assert other.status_code == 200, "one client's limit must not block another"


def test_a_client_added_while_running_can_get_a_token(auth: AuthServer) -> None:
    late = add_client(auth.database, "Late", ["usage:read"])
    deadline = time.monotonic() + 10
    while True:
        response = httpx2.post(
            auth.token_url,
            data={"grant_type": "client_credentials"},
            auth=(late.client_id, late.client_secret),
        )
        if response.status_code == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert response.status_code == 200
    assert auth.check(response.json()["access_token"], "usage:read").scopes == {"usage:read"}


def test_cli_adds_a_client_showing_the_secret_once(database: str) -> None:
    env = {"CHARGELINE_DATABASE_URL": database, "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chargeline", "clients", "add", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    bad = run("WeCharge", "--scopes", "charges:write", "everything")
    assert bad.returncode == 2 and "unknown scopes ['everything']" in bad.stderr
    good = run("WeCharge", "--scopes", "charges:write", "--webhook-url", "https://p.example/h")
    assert good.returncode == 0, good.stderr
    fields = dict(line.split(None, 1) for line in good.stdout.splitlines()[:3])
    stored = query(database, "SELECT client_id, secret_sha256, webhook_url FROM oauth_clients")
    assert stored == [
        (
            fields["client_id"],
            hashlib.sha256(fields["client_secret"].encode()).digest(),
            "https://p.example/h",
        )
    ]
    assert (
        fields["client_secret"].encode()
        not in json.dumps(query(database, "SELECT * FROM oauth_clients"), default=str).encode()
    )


def test_cli_lists_rotates_and_removes_clients(auth: AuthServer) -> None:
    """`clients list` shows no secrets; `rotate-secret` stops the old client secret at once
    and prints the new one; `remove` stops tokens; unknown ids are a clear error."""
    env = {"CHARGELINE_DATABASE_URL": auth.database, "PATH": "/usr/bin:/bin"}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "chargeline", "clients", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )

    listed = run("list")
    assert listed.returncode == 0, listed.stderr
    assert auth.writer.client_id in listed.stdout and "'WeCharge'" in listed.stdout
    assert auth.writer.client_secret not in listed.stdout
    assert auth.writer.webhook_secret not in listed.stdout

    rotated = run("rotate-secret", auth.writer.client_id)
    assert rotated.returncode == 0, rotated.stderr
    new_secret = rotated.stdout.split()[1]
    wait_for(lambda: _refused_token(auth, auth.writer), timeout=10, what="the old secret refused")
    renewed = NewClient(auth.writer.client_id, new_secret, auth.writer.webhook_secret)
    wait_for(lambda: auth.token_for(renewed), timeout=10, what="a token with the new secret")

    hook = run("rotate-secret", auth.writer.client_id, "--webhook", "--overlap-hours", "2")
    assert hook.returncode == 0 and hook.stdout.startswith("webhook_secret whsec_"), hook.stdout

    removed = run("remove", auth.reader.client_id)
    assert removed.returncode == 0, removed.stderr
    assert "removed" in run("list").stdout
    wait_for(lambda: _refused_token(auth, auth.reader), timeout=10, what="no token once removed")
    unknown = run("remove", "cl_nobody")
    assert unknown.returncode == 1 and "no client 'cl_nobody'" in unknown.stderr


def _refused_token(auth: AuthServer, client: NewClient) -> bool:
    try:
        auth.token_for(client)
    except OAuthError:
        return True
    return False


def test_a_remembered_token_still_expires_and_keeps_its_scopes(auth: AuthServer) -> None:
    """The validator remembers tokens whose signature passed; times and scope are
    checked on every call all the same."""
    # At least 2 s of life (exp is whole seconds): the first check fetches the JWKS, which
    # on a loaded machine took long enough to outlive a token with 0-1 s left.
    exp = math.ceil(time.time() + 2)
    token = forge(auth, exp=exp, scope="charges:read")

    async def run() -> list[str]:
        outcomes: list[str] = []
        async with httpx2.AsyncClient() as http:
            validator = auth.validator(http, leeway_s=0)
            for scope, expired in (
                ("charges:read", False),
                ("charges:write", False),
                ("charges:read", True),
            ):
                if expired:
                    await asyncio.sleep(max(0.0, exp - time.time()) + 0.2)
                try:
                    await validator.check(f"Bearer {token}", scope)
                    outcomes.append("ok")
                except TokenError as exc:
                    outcomes.append(exc.error)
        return outcomes

    assert asyncio.run(run()) == ["ok", "insufficient_scope", "invalid_token"]


def test_nobody_can_spend_another_clients_token_allowance(auth: AuthServer) -> None:
    """Finding 11 of the security review. A stranger who knows the writer's client id (it
    is in every token) floods the token endpoint with it and wrong secrets, from another
    address: the stranger is slowed down, the writer still gets its tokens."""
    codes: list[int] = []
    # From another loopback address, as another machine would send them.
    transport = httpx2.HTTPTransport(local_address="127.0.0.2")
    with httpx2.Client(transport=transport) as stranger:
        while 429 not in codes and len(codes) < 500:
            answer = stranger.post(
                auth.token_url,
                data={"grant_type": "client_credentials"},
                auth=(auth.writer.client_id, "wrong"),
            )
            codes.append(answer.status_code)
    assert codes[0] == 401 and codes[-1] == 429, codes
    for _ in range(3):
        assert auth.token_for(auth.writer)["access_token"]


def test_unknown_ids_and_wrong_secrets_get_the_same_answer(auth: AuthServer) -> None:
    """Finding 13. The token endpoint does not tell which client ids exist."""
    answers = [
        httpx2.post(
            auth.token_url,
            data={"grant_type": "client_credentials"},
            auth=(client_id, "wrong-secret"),
        )
        for client_id in (auth.writer.client_id, "cl_00000000deadbeef")
    ]
    assert [a.status_code for a in answers] == [401, 401]
    assert answers[0].json() == answers[1].json()
    assert answers[0].headers["www-authenticate"] == answers[1].headers["www-authenticate"]
    posted = [
        httpx2.post(
            auth.token_url,
            data={
                "grant_type": "client_credentials",
                "client_id": client_id,
                "client_secret": "wrong-secret",
            },
        )
        for client_id in (auth.writer.client_id, "cl_00000000deadbeef")
    ]
    assert [p.status_code for p in posted] == [400, 400]
    assert posted[0].json() == posted[1].json() == answers[0].json()


def test_json_logs_carry_the_request_id_the_caller_sent_and_the_client(
    database: str, tmp_path: Path
) -> None:
    """``CHARGELINE_LOG_FORMAT=json``: every line the server writes is one JSON object, a
    token's line names the client and the request's id, and the answer carries that id
    (the caller's own if it is well formed, a new one otherwise)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    partner = add_client(database, "Logged", ["charges:read"])
    env = auth_env(database, tmp_path, port, log_format="json", log_level="INFO")
    proc = Proc("auth-json", ["auth"], env, tmp_path).start()
    try:
        wait_port(port, proc=proc)
        form = {"grant_type": "client_credentials"}
        auth = (partner.client_id, partner.client_secret)
        mine = httpx2.post(
            f"{url}/oauth2/token", data=form, auth=auth, headers={"X-Request-Id": "wecharge-42"}
        )
        assert mine.status_code == 200, mine.text
        assert mine.headers["x-request-id"] == "wecharge-42"
        odd = httpx2.post(
            f"{url}/oauth2/token", data=form, auth=auth, headers={"X-Request-Id": "not one"}
        )
        assert odd.status_code == 200
        assert odd.headers["x-request-id"] != "not one" and len(odd.headers["x-request-id"]) == 16
    finally:
        proc.stop()
    lines = [json.loads(line) for line in proc.log().splitlines() if line.strip()]
    assert lines and all({"time", "level", "logger", "message"} <= set(doc) for doc in lines)
    issued = [doc for doc in lines if doc["message"].startswith("token issued")]
    assert [(doc["request_id"], doc["client_id"]) for doc in issued] == [
        ("wecharge-42", partner.client_id),
        (odd.headers["x-request-id"], partner.client_id),
    ]

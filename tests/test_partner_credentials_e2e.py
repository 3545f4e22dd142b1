"""Partners' credentials against the running stack: each partner sees only its own charges;
disabled clients, rotated secrets and signing keys, and tokens minted wrongly."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import httpx2
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey

from tests.conftest import Installation
from tests.db import query
from tests.partners import (
    Partner,
    _kid,
    another_partner,
    chargeline,
    problem,
)
from tests.procs import wait_for

pytestmark = pytest.mark.processes


def test_partners_see_only_their_own_charges_and_share_no_ids(
    partner: Partner, installation: Installation
) -> None:
    """Findings 6 and 7 of the security review. Two partners use the same charge id on
    two outlets of one controller: both charges start (ids are each client's own), each
    partner reads, stops and hears about its own only; the other's outlet shows as
    charging, without the other's charge id, state or energy, in the status answer and in
    the outlet.status webhook."""
    cid = installation.controllers[0]
    mine, theirs = f"{cid}-2", f"{cid}-4"
    started = partner.post("/v1/charges", {"outlet_id": mine, "charge_id": "order-1"})
    assert started.status_code == 201, started.text
    with another_partner(partner, installation) as rival:
        assert problem(rival.get("/v1/charges/order-1")) == (404, "unknown-charge")
        own = rival.post("/v1/charges", {"outlet_id": theirs, "charge_id": "order-1"})
        assert own.status_code == 201, own.text
        assert own.json()["outlet_id"] == theirs

        seen = rival.get(f"/v1/outlets/{mine}/status").json()
        assert seen["charging"] is True and seen["active_charge_id"] is None
        assert partner.get(f"/v1/outlets/{mine}/status").json()["active_charge_id"] == "order-1"
        note = rival.status(mine)
        assert note["charging"] is True and note["charge"] is None
        assert partner.status(mine)["charge"]["charge_id"] == "order-1"

        stopped = rival.post("/v1/charges/order-1/stop")
        assert stopped.status_code == 200 and stopped.json()["outlet_id"] == theirs
        wait_for(
            lambda: rival.event("charge.stopped", charge_id="order-1"),
            timeout=20,
            what="the rival's charge.stopped",
        )
        assert partner.get("/v1/charges/order-1").json()["state"] in ("on", "drawing")
        assert partner.event("charge.stopped", charge_id="order-1") is None
        assert {w["data"]["outlet_id"] for w in partner.webhooks("order-1")} == {mine}
        assert {w["data"]["outlet_id"] for w in rival.webhooks("order-1")} == {theirs}
        leaked = [
            body
            for body in rival.events(lambda b: True)
            if mine in json.dumps(body) and body["type"] != "outlet.status"
        ]
        assert leaked == []


def test_a_disabled_client_is_stopped_at_once_and_the_operator_can_stop_its_charges(
    partner: Partner, installation: Installation
) -> None:
    """Finding 9 of the security review. `clients disable`: within seconds the token the
    partner holds is refused and it gets no new one, its webhooks stop, and its running
    charge is stopped by the operator (`charges stop`). `clients enable` lets it back in
    with a new token (the old one stays void), and the held webhook goes out."""
    outlet = f"{installation.controllers[0]}-5"
    started = partner.post("/v1/charges", {"outlet_id": outlet, "charge_id": "dis-1"})
    assert started.status_code == 201, started.text
    client_id = partner.client.client_id
    old_token = dict(partner.oauth.token)

    disabled = chargeline(installation, "clients", "disable", client_id)
    assert disabled.returncode == 0, disabled.stderr
    wait_for(
        lambda: partner.get("/v1/charges/dis-1").status_code == 401,
        timeout=5,
        what="the held token refused within seconds",
    )
    fetched = httpx2.post(
        partner.token_url,
        data={"grant_type": "client_credentials"},
        auth=(client_id, partner.client.client_secret),
    )
    assert fetched.status_code == 401 and fetched.json()["error"] == "invalid_client"

    stopped = chargeline(installation, "charges", "stop", "dis-1", "--client", client_id)
    assert stopped.returncode == 0, stopped.stderr
    assert "OFF sent" in stopped.stdout
    wait_for(
        lambda: (
            query(
                installation.database,
                "SELECT state FROM charges WHERE client_id = %s AND partner_charge_id = 'dis-1'",
                client_id,
            )
            == [("stopped",)]
        ),
        timeout=20,
        what="the operator's stop reaching the breaker",
    )
    time.sleep(2)  # the deliverer had time to post the stop, if it were allowed to
    assert partner.event("charge.stopped", charge_id="dis-1") is None

    enabled = chargeline(installation, "clients", "enable", client_id)
    assert enabled.returncode == 0, enabled.stderr
    partner.oauth.token = old_token
    assert partner.get("/v1/charges/dis-1").status_code == 401, "the old token stays void"
    wait_for(
        lambda: partner.oauth.fetch_token(grant_type="client_credentials"),
        timeout=10,
        what="a new token",
    )
    assert partner.get("/v1/charges/dis-1").json()["state"] == "stopped"
    stop = wait_for(
        lambda: partner.event("charge.stopped", charge_id="dis-1"),
        timeout=20,
        what="the held charge.stopped webhook",
    )
    assert stop["data"]["reason"] == "operator stopped"


def test_a_signing_key_rotation_fails_no_token_and_withdraws_what_it_must(
    partner: Partner, installation: Installation
) -> None:
    """Finding 10. After `keys rotate`, tokens of the old key and of the new one both work
    at once (the API fetches the new key when it first sees it). A rotation that
    withdraws the previous key at once (`--retire-after 0`) voids that key's tokens,
    although the API had verified and cached them."""
    first = partner.oauth.token["access_token"]
    assert partner.get("/v1/outlets/" + f"{installation.controllers[0]}-1/status").is_success

    def call(token: str) -> int:
        response = httpx2.get(
            f"{partner.api}/v1/outlets/{installation.controllers[0]}-1/status",
            headers={"authorization": f"Bearer {token}"},
            timeout=15,  # a call with a new kid may wait for the API's next JWKS fetch (5 s)
        )
        return response.status_code

    rotated = chargeline(installation, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    second = partner.oauth.fetch_token(grant_type="client_credentials")["access_token"]
    assert _kid(second) != _kid(first)
    assert call(second) == 200 and call(first) == 200
    jwks = httpx2.get(partner.token_url.replace("oauth2/token", ".well-known/jwks.json")).json()
    assert {k["kid"] for k in jwks["keys"]} == {_kid(first), _kid(second)}

    withdrawn = chargeline(installation, "keys", "rotate", "--retire-after", "0")
    assert withdrawn.returncode == 0, withdrawn.stderr
    third = partner.oauth.fetch_token(grant_type="client_credentials")["access_token"]
    assert call(third) == 200
    assert call(second) == 401, "a withdrawn key's tokens are refused, cached or not"
    assert call(first) == 200, "the first key is still published until its tokens expire"


def test_tokens_minted_for_long_or_without_iat_are_refused(
    partner: Partner, installation: Installation
) -> None:
    """Finding 10. A token signed with the server's own key but valid for ten years, or
    without ``iat``, is refused: the lifetime, not only the signature, is checked."""
    key = ECKey.import_key(
        json.loads((installation.tmp / "data" / "keys" / "signing.jwk").read_text())
    )
    now = int(time.time())
    issuer = partner.token_url.removesuffix("/oauth2/token")
    claims = {
        "iss": issuer,
        "aud": "chargeline-api",
        "sub": partner.client.client_id,
        "client_id": partner.client.client_id,
        "scope": "outlets:read",
        "jti": "x",
    }
    header = {"alg": "ES256", "typ": "at+jwt", "kid": key.kid}
    ten_years = jwt.encode(header, {**claims, "iat": now, "exp": now + 10 * 365 * 86400}, key)
    no_iat = jwt.encode(header, {**claims, "exp": now + 300}, key)
    fine = jwt.encode(header, {**claims, "iat": now, "exp": now + 300}, key)
    path = f"{partner.api}/v1/outlets/{installation.controllers[0]}-1/status"
    answers = {
        name: httpx2.get(path, headers={"authorization": f"Bearer {token}"})
        for name, token in (("ten years", ten_years), ("no iat", no_iat), ("fine", fine))
    }
    assert answers["fine"].status_code == 200
    assert answers["ten years"].status_code == 401
    assert "lifetime" in answers["ten years"].json()["detail"]
    assert answers["no iat"].status_code == 401 and "iat" in answers["no iat"].json()["detail"]


def test_token_headers_are_never_echoed_and_every_bad_month_is_named(
    partner: Partner, installation: Installation
) -> None:
    """Finding 13. Quotes or non-Latin-1 characters in a token's header fields, or raw
    bytes in the Authorization header, get a 401 whose WWW-Authenticate echoes nothing
    (no header injection, no 500); a usage month the contract does not admit is a 422."""
    path = f"{partner.api}/v1/outlets/{installation.controllers[0]}-1/status"

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = part({"iss": "x", "exp": 1})
    headers = [
        {"alg": 'ES256", error_uri="https://evil.example', "typ": "at+jwt"},
        {"alg": "ES256", "typ": 'at+jwt"\r\nSet-Cookie: a=b'},
        {"alg": "ES256", "typ": "at+jwt", "kid": 'ключ\u2028"x'},
    ]
    for header in headers:
        token = f"{part(header)}.{claims}.AAAA"
        answer = httpx2.get(path, headers={"authorization": f"Bearer {token}"})
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert "set-cookie" not in answer.headers
    raw = httpx2.get(path, headers={"authorization": b"Bearer \xc3\xa9\xff\xfe"})
    assert raw.status_code == 401
    outlet = f"{installation.controllers[0]}-1"
    for month in ("0000-00", "0000-01", "2026-00", "2026-13", "99999-01"):
        answer = partner.get(f"/v1/outlets/{outlet}/usage?month={month}")
        assert problem(answer) == (422, "invalid-request"), month


def test_a_rotated_secret_voids_old_tokens_and_a_new_token_works_at_once(
    partner: Partner, installation: Installation
) -> None:
    """Finding 9. After `clients rotate-secret`, the token the partner held is refused
    within seconds, and a token fetched with the new secret right away works (it is not
    mistaken for one issued before the rotation)."""
    path = f"/v1/outlets/{installation.controllers[0]}-1/status"
    assert partner.get(path).status_code == 200
    rotated = chargeline(installation, "clients", "rotate-secret", partner.client.client_id)
    assert rotated.returncode == 0, rotated.stderr
    wait_for(
        lambda: partner.get(path).status_code == 401,
        timeout=5,
        what="the old token refused",
    )
    new_secret = rotated.stdout.split()[1]

    def fresh_token() -> str | None:
        answer = httpx2.post(
            partner.token_url,
            data={"grant_type": "client_credentials"},
            auth=(partner.client.client_id, new_secret),
        )
        return str(answer.json()["access_token"]) if answer.status_code == 200 else None

    token = wait_for(fresh_token, timeout=10, what="a token with the new secret")
    answer = httpx2.get(f"{partner.api}{path}", headers={"authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text

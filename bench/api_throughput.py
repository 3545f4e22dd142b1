"""One API process under load: outlet status reads (token checked on every call) and tokens.

The authorization server and the gateway run as in production (one uvicorn process each)
against a database holding a day of minute readings for every outlet. The load comes
from one client process that keeps ``--connections`` HTTP/1.1 connections busy with a
minimal keep-alive client (a general-purpose HTTP client would measure itself, not the
server). Each phase runs for a fixed time; every answer's status is checked.
Targets: ≥ 1,000 status reads/s, ≥ 300 tokens/s.
"""

from __future__ import annotations

import asyncio
import base64
import sys
import time

import psycopg
from authlib.integrations.httpx_client import OAuth2Client

from bench.common import emit, parser, workdir
from bench.stack import partner_stack

CONTROLLERS = [f"a{n:04d}" for n in range(4)]


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--connections", type=int, default=16)
    args = p.parse_args()
    seconds = 3.0 if args.quick else 10.0
    with (
        workdir() as tmp,
        partner_stack(tmp, CONTROLLERS, scopes=["outlets:read"], edges=False) as stack,
    ):
        fill_readings(stack.db)
        client = stack.client
        with OAuth2Client(
            client.client_id, client.client_secret, token_endpoint=stack.token_url
        ) as oauth:
            token = oauth.fetch_token(grant_type="client_credentials")["access_token"]
        outlets = [f"{c}-{n}" for c in CONTROLLERS for n in range(1, 9)]
        reads = [
            request(
                "GET", stack.api, f"/v1/outlets/{o}/status", {"authorization": f"Bearer {token}"}
            )
            for o in outlets
        ]
        basic = base64.b64encode(f"{client.client_id}:{client.client_secret}".encode()).decode()
        form = b"grant_type=client_credentials"
        tokens = [
            request(
                "POST",
                stack.token_url.rsplit("/oauth2", 1)[0],
                "/oauth2/token",
                {
                    "authorization": f"Basic {basic}",
                    "content-type": "application/x-www-form-urlencoded",
                },
                form,
            )
        ]
        status_rate = asyncio.run(load(stack.api, reads, seconds, args.connections))
        token_rate = asyncio.run(
            load(stack.token_url.rsplit("/oauth2", 1)[0], tokens, seconds, args.connections)
        )
    figures = {
        "seconds_per_phase": seconds,
        "connections": args.connections,
        "status_reads_per_s": round(status_rate),
        "tokens_per_s": round(token_rate),
    }
    print(
        f"status reads {figures['status_reads_per_s']}/s, tokens {figures['tokens_per_s']}/s",
        file=sys.stderr,
    )
    emit("api_throughput", figures)


def fill_readings(db: str) -> None:
    """A day of minute readings per outlet, so every status read finds real rows."""
    with psycopg.connect(db) as conn:
        conn.execute(
            "INSERT INTO outlet_readings (controller_id, outlet_no, minute, energy_wh, voltage_v,"
            " current_a, breaker_on)"
            " SELECT c, n, date_trunc('minute', now()) - make_interval(mins => m),"
            "  10000 - m, 200, 0, false"
            " FROM unnest(%s::text[]) c, generate_series(1, 8) n, generate_series(0, 1439) m",
            (CONTROLLERS,),
        )


def request(method: str, base: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    host = base.split("://", 1)[1]
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}", f"content-length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def load(base: str, requests: list[bytes], seconds: float, connections: int) -> float:
    """Keep ``connections`` connections busy for ``seconds``; return answers per second."""
    host, port = base.split("://", 1)[1].split(":")
    deadline = time.monotonic() + seconds
    done = [0]

    async def worker(k: int) -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        i = k
        while time.monotonic() < deadline:
            writer.write(requests[i % len(requests)])
            i += 1
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12]
            if status != b"200":
                raise SystemExit(f"answered {head.decode(errors='replace')}")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            done[0] += 1
        writer.close()

    start = time.monotonic()
    await asyncio.gather(*(worker(k) for k in range(connections)))
    return done[0] / (time.monotonic() - start)


if __name__ == "__main__":
    main()

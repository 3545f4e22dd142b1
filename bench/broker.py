"""The embedded amqtt broker beside Mosquitto, both with chargeline's access policy.

For each broker, in one run and on the same registry (controllers with passwords, argon2
for amqtt, PBKDF2 for Mosquitto through ``chargeline broker export mosquitto``):

1. **Idle controllers held.** Raw MQTT connections, one per controller, each with its own
   identity (client id = username), 60 s keepalive, subscribed to its ten topics as an
   edge agent is (meter/ack, request, eight desired); how many the broker accepts and keeps,
   how fast they connect, and the broker's resident memory per connection.
2. **QoS 1 messages/s,** with the idle controllers still connected: one controller
   publishes meter messages, ingest's identity receives them (both QoS 1, 200 bytes).
3. **QoS 1 round trip** (TCP_NODELAY): a controller publishes a meter message, ingest
   answers with ``meter/ack``, the controller receives it: two QoS 1 hops, p50 and p99.

Ratios are amqtt / Mosquitto. Target: amqtt holds ≥ 2,000 idle controllers.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from bench.common import database, emit, parser, workdir
from broker import identities
from broker.identities import DEFAULT_SERVICE_NAMES
from broker.policy import Role
from kernel import mqtt
from kernel.settings import MqttUrl
from kernel.stats import percentile
from schemas.topics import TopicKind, Topics
from tests.mqtt_wire import connect_packet, subscribe_packet
from tests.procs import free_port, rss_kib, wait_port

TOPICS = Topics()
INGEST = DEFAULT_SERVICE_NAMES[Role.INGEST]
PAYLOAD = bytes(200)


def issue_all(url: str, names: list[tuple[str, Role]]) -> dict[str, str]:
    """Passwords for many identities at once, hashed on every core."""
    passwords = {name: identities.new_password() for name, _ in names}
    with ProcessPoolExecutor() as pool:
        hashes = list(pool.map(identities.hashes_of, passwords.values(), chunksize=64))
    with psycopg.connect(url) as conn:
        for (name, role), (argon2, pbkdf2) in zip(names, hashes, strict=True):
            identities.store(conn, name, role, argon2, pbkdf2)
    return passwords


# --- brokers --------------------------------------------------------------------------------


@contextmanager
def amqtt(tmp: Path, db: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = _env(tmp, db, port)
    proc = subprocess.Popen([sys.executable, "-m", "chargeline", "broker"], env=env)
    try:
        wait_port(port, timeout=60)
        yield f"mqtt://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        proc.wait(30)


@contextmanager
def mosquitto(tmp: Path, db: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    out = tmp / f"mosquitto-{port}"
    # --user root: the benchmark's temporary directory is private to root.
    export = ["broker", "export", "mosquitto", "--out", str(out), "--user", "root"]
    subprocess.run(
        [sys.executable, "-m", "chargeline", *export],
        env=_env(tmp, db, port),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    conf = out / "mosquitto.conf"
    conf.write_text(conf.read_text().replace("log_type information\n", ""))  # no per-connect lines
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([exe, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=30)
        yield f"mqtt://127.0.0.1:{port}", proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def _env(tmp: Path, db: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "CHARGELINE_DATABASE_URL": db,
        "CHARGELINE_DATA_DIR": str(tmp / f"broker-{port}"),
        "CHARGELINE_BROKER_BIND": f"127.0.0.1:{port}",
        "CHARGELINE_LOG_LEVEL": "WARNING",
        # The whole fleet connects from loopback; in the field each site has its own address.
        "CHARGELINE_BROKER_MAX_CONNECTIONS_PER_ADDRESS": "100000",
    }


# --- 1. idle controllers ----------------------------------------------------------------


class Idle:
    """Raw connections that do what an edge agent does on connecting (CONNECT, then
    SUBSCRIBE to its meter/ack, request and eight desired topics) and then say nothing
    (keepalive 60 s)."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.refused = 0

    async def connect(self, port: int, name: str, password: str) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(connect_packet(name, username=name, password=password, keepalive=60))
        connack = await asyncio.wait_for(reader.readexactly(4), 60)
        if connack[3] == 0:
            filters = [TOPICS.meter_ack(name), TOPICS.request(name)]
            filters += [TOPICS.desired(name, n) for n in range(1, 9)]
            writer.write(subscribe_packet(1, filters))
            suback = await asyncio.wait_for(reader.readexactly(4 + len(filters)), 60)
            if any(code & 0x80 for code in suback[4:]):
                raise SystemExit(f"{name}: subscriptions refused: {suback!r}")
            self.writers.append(writer)
        else:
            self.refused += 1
            writer.close()

    def alive(self) -> int:
        return sum(not w.is_closing() and not w.transport.is_closing() for w in self.writers)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()


async def hold_idle(port: int, passwords: dict[str, str], names: list[str]) -> tuple[Idle, float]:
    idle = Idle()
    limit = asyncio.Semaphore(64)

    async def one(name: str) -> None:
        async with limit:
            await idle.connect(port, name, passwords[name])

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in names))
    return idle, time.perf_counter() - started


# --- 2 and 3. QoS 1 through the broker --------------------------------------------------


async def qos1(
    url: str, passwords: dict[str, str], cid: str, messages: int, rtts: int
) -> dict[str, Any]:
    def login(name: str) -> MqttUrl:
        return MqttUrl(MqttUrl.with_login(url, name, passwords[name]))

    async with (
        mqtt.client(login(cid), identifier=cid, max_inflight_messages=100) as edge,
        mqtt.client(login(INGEST), identifier=INGEST, max_inflight_messages=100) as ingest,
    ):
        await ingest.subscribe(TOPICS.filter_for(TopicKind.METER, "+"), qos=1)
        await edge.subscribe(TOPICS.meter_ack(cid), qos=1)
        received = aiter(ingest.messages)

        # throughput: pipelined publishes, counted at the subscriber
        async def count() -> None:
            for _ in range(messages):
                await anext(received)

        window = asyncio.Semaphore(100)  # QoS 1 messages in flight, as the client allows

        async def publish() -> None:
            async with window:
                await edge.publish(TOPICS.meter(cid), PAYLOAD, qos=1, timeout=60)

        counting = asyncio.create_task(count())
        started = time.perf_counter()
        await asyncio.gather(*(publish() for _ in range(messages)))
        await asyncio.wait_for(counting, 120)
        rate = messages / (time.perf_counter() - started)

        # round trips: meter → ingest → meter/ack → controller
        acks = aiter(edge.messages)
        times: list[float] = []
        for _ in range(rtts):
            start = time.perf_counter()
            await edge.publish(TOPICS.meter(cid), PAYLOAD, qos=1)
            await anext(received)
            await ingest.publish(TOPICS.meter_ack(cid), b"ack", qos=1)
            await anext(acks)
            times.append(time.perf_counter() - start)
    return {
        "qos1_msgs_per_s": round(rate),
        "qos1_rtt_ms": {
            "p50": round(percentile(times, 50) * 1000, 2),
            "p99": round(percentile(times, 99) * 1000, 2),
        },
    }


def measure(
    kind: str, broker: Any, *, tmp: Path, db: str, passwords: dict[str, str], args: Any
) -> dict[str, Any]:
    idle_names = [n for n in passwords if not n.startswith("svc_")][1:]
    with broker(tmp, db) as (url, pid):
        port = MqttUrl(url).port
        time.sleep(0.5)
        before = rss_kib(pid)

        async def run() -> dict[str, Any]:
            idle, seconds = await hold_idle(port, passwords, idle_names)
            await asyncio.sleep(2)  # let the broker settle; anything it drops shows here
            held = idle.alive()
            after = rss_kib(pid)
            print(
                f"{kind}: {held} of {len(idle_names)} idle controllers held"
                f" ({len(idle_names) / seconds:.0f} connects/s), {after - before} KiB more",
                file=sys.stderr,
            )
            figures = await qos1(url, passwords, "b0000", args.messages, args.rtts)
            still = idle.alive()
            idle.close()
            return {
                "idle_held": held,
                "idle_refused": idle.refused,
                "idle_after_traffic": still,
                "connects_per_s": round(len(idle_names) / seconds),
                "rss_kib_per_connection": round((after - before) / max(held, 1), 1),
                **figures,
            }

        result = asyncio.run(run())
    print(f"{kind}: {result}", file=sys.stderr)
    return result


def main() -> None:
    p = parser(__doc__)
    args = p.parse_args()
    controllers = 200 if args.quick else 2000
    args.messages = 2000 if args.quick else 20_000
    args.rtts = 100 if args.quick else 500
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the brokers inherit it
    if hard < 2 * controllers + 200:
        raise SystemExit(f"open files limit {hard} is too low for {controllers} connections")
    with workdir() as tmp:
        names = [f"b{c:04d}" for c in range(controllers + 1)]
        db = database(tmp, names)
        started = time.perf_counter()
        passwords = issue_all(db, [(n, Role.CONTROLLER) for n in names] + [(INGEST, Role.INGEST)])
        print(
            f"issued {len(passwords)} identities in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        results = {
            kind: measure(kind, broker, tmp=tmp, db=db, passwords=passwords, args=args)
            for kind, broker in (("mosquitto", mosquitto), ("amqtt", amqtt))
        }
    a, m = results["amqtt"], results["mosquitto"]
    emit(
        "broker",
        {
            "idle_controllers": controllers,
            "amqtt": a,
            "mosquitto": m,
            "ratio_qos1_msgs_per_s": round(a["qos1_msgs_per_s"] / m["qos1_msgs_per_s"], 2),
            "ratio_qos1_rtt_p50": round(a["qos1_rtt_ms"]["p50"] / m["qos1_rtt_ms"]["p50"], 2),
            "ratio_rss_per_connection": round(
                a["rss_kib_per_connection"] / max(m["rss_kib_per_connection"], 0.1), 1
            ),
            "target_idle_held": a["idle_held"] >= 2000 if not args.quick else None,
        },
    )


if __name__ == "__main__":
    main()

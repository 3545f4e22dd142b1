"""A fleet's worth of meter batches, published as fast as the broker takes them (QoS 1).

Run as a separate process so the publisher does not share a core with what is measured:
``python -m bench.publisher URL ROOT CONTROLLERS MESSAGES FRAMES [CONNECTIONS [RATE]]``.
It connects (``CONNECTIONS`` MQTT connections, default 4, each publishing for its share of
the controllers, as the brokers see a fleet: many connections, not one), prints ``ready``,
waits for a line on stdin, publishes (at most ``RATE`` messages per second in all if
given and not 0), and prints ``done SECONDS``.
"""

from __future__ import annotations

import sys
import threading
import time

import paho.mqtt.client as paho

from bench.common import batch
from kernel.settings import MqttUrl
from schemas.codec import encode
from schemas.topics import Topics


def main() -> None:
    url, root = sys.argv[1], sys.argv[2]
    controllers, messages, frames = map(int, sys.argv[3:6])
    connections = int(sys.argv[6]) if len(sys.argv) > 6 else 4
    rate = float(sys.argv[7]) if len(sys.argv) > 7 else 0.0
    topics = Topics(root)
    # Each controller's batches in order, on one connection (as an edge sends them).
    shares: list[list[tuple[str, bytes]]] = [[] for _ in range(connections)]
    for m in range(messages):
        for c in range(controllers):
            cid = f"b{c:04d}"
            shares[c % connections].append(
                (topics.meter(cid), encode(batch(cid, m + 1, m * frames, frames)))
            )
    total = sum(map(len, shares))
    mqtt = MqttUrl(url)
    done = threading.Event()
    lock = threading.Lock()
    acked = 0

    def on_publish(*_: object) -> None:
        nonlocal acked
        with lock:
            acked += 1
            if acked == total:
                done.set()

    clients = []
    for k in range(connections):
        client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=f"bench-publisher-{k}")
        # Unlimited in flight: each simulated controller has one message in flight at a
        # time, and with a limit paho rescans its whole queue on every PUBACK (quadratic).
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.on_publish = on_publish
        client.connect(mqtt.host, mqtt.port)
        client.loop_start()
        clients.append(client)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    senders = [
        threading.Thread(target=_publish, args=(client, share, rate / connections))
        for client, share in zip(clients, shares, strict=True)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join()
    done.wait(600)
    print(f"done {time.perf_counter() - start:.3f}", flush=True)
    for client in clients:
        client.loop_stop()
        client.disconnect()


def _publish(client: paho.Client, share: list[tuple[str, bytes]], rate: float) -> None:
    start = time.perf_counter()
    for n, (topic, payload) in enumerate(share):
        if rate and n % 50 == 0:  # on schedule, 50 messages at a time
            ahead = start + n / rate - time.perf_counter()
            if ahead > 0:
                time.sleep(ahead)
        client.publish(topic, payload, qos=1)


if __name__ == "__main__":
    main()

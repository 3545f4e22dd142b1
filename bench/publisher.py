"""A fleet's worth of meter batches, published as fast as the broker takes them (QoS 1).

Run as a separate process so the publisher does not share a core with what is measured:
``python -m bench.publisher URL ROOT CONTROLLERS MESSAGES FRAMES``. It connects, prints
``ready``, waits for a line on stdin, publishes, and prints ``done SECONDS``.
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
    url, root, controllers, messages, frames = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    topics = Topics(root)
    payloads = [
        (topics.meter(f"b{c:04d}"), encode(batch(f"b{c:04d}", m + 1, m * frames, frames)))
        for m in range(messages)
        for c in range(controllers)
    ]
    mqtt = MqttUrl(url)
    done = threading.Event()
    acked = 0

    def on_publish(*_: object) -> None:
        nonlocal acked
        acked += 1
        if acked == len(payloads):
            done.set()

    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="bench-publisher")
    # Unlimited in flight: each simulated controller has one message in flight at a time,
    # and with a limit paho rescans its whole queue on every PUBACK (quadratic).
    client.max_inflight_messages_set(0)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(mqtt.host, mqtt.port)
    client.loop_start()
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.perf_counter()
    for topic, payload in payloads:
        client.publish(topic, payload, qos=1)
    done.wait(600)
    print(f"done {time.perf_counter() - start:.3f}", flush=True)
    client.loop_stop()
    client.disconnect()


if __name__ == "__main__":
    main()

"""Edge agent footprint: one agent, 8 simulated outlets, sampling every second in real time.

Figures: resident memory (target < 60 MB) and CPU as a share of one core (target < 2%),
measured from /proc over the run after a warm-up. The agent talks to the embedded broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import amqtt_broker, emit, parser, workdir
from tests.procs import rss_kib


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    return rss_kib(pid) / 1024


def main() -> None:
    args = parser(__doc__).parse_args()
    seconds = 30 if args.quick else 180
    with workdir() as tmp, amqtt_broker(tmp) as url:
        env = {
            **os.environ,
            "CHARGELINE_MQTT_URL": url,
            "CHARGELINE_DATA_DIR": str(tmp),
            "CHARGELINE_LOG_LEVEL": "WARNING",
            "CHARGELINE_SIM_AUTOPLAY": "true",
        }
        agent = subprocess.Popen(
            [sys.executable, "-m", "chargeline", "edge", "--controller-id", "footprint"], env=env
        )
        try:
            time.sleep(5)  # imports and connection are start-up, not steady state
            cpu0, t0 = cpu_seconds(agent.pid), time.monotonic()
            peak = 0.0
            while time.monotonic() - t0 < seconds:
                time.sleep(1)
                peak = max(peak, rss_mb(agent.pid))
            cpu_share = (cpu_seconds(agent.pid) - cpu0) / (time.monotonic() - t0)
        finally:
            agent.terminate()
            agent.wait(10)
    print(f"edge agent: {peak:.1f} MB resident, {cpu_share * 100:.2f}% of a core", file=sys.stderr)
    emit(
        "edge_footprint",
        {
            "seconds": seconds,
            "rss_mb": round(peak, 1),
            "cpu_percent_of_core": round(cpu_share * 100, 2),
        },
    )


if __name__ == "__main__":
    main()

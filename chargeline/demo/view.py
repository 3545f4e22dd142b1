"""What the demo shows while it runs, and its closing summary.

On a terminal, a live view (rich): every outlet (breaker, current, the car's visit, its
charge and the energy so far), the partner's event feed and the pipeline's counters. When
stdout is not a terminal (CI, a pipe, ``--plain``), the same facts as plain log lines.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from chargeline.demo.partner import Tally
from chargeline.demo.residents import World
from chargeline.demo.site import SITE, outlet_id_of
from kernel.stats import percentile

_COUNTERS = """
SELECT (SELECT count(*) FROM outlet_readings),
       (SELECT count(DISTINCT minute) FROM outlet_readings),
       (SELECT count(*) FROM meter_batches),
       (SELECT count(*) FROM dead_letters),
       count(*),
       count(*) FILTER (WHERE delivered_at IS NOT NULL),
       count(*) FILTER (WHERE gave_up_at IS NOT NULL)
FROM webhook_outbox WHERE client_id = %s
"""


@dataclass(frozen=True)
class Counters:
    readings: int
    minutes: int
    batches: int
    dead_letters: int
    webhooks: int
    delivered: int
    gave_up: int

    @property
    def undelivered(self) -> int:
        return self.webhooks - self.delivered


async def counters(conn: psycopg.AsyncConnection[Any], client_id: str) -> Counters:
    row = await (await conn.execute(_COUNTERS, (client_id,))).fetchone()
    assert row is not None
    return Counters(*row)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p99 (None when there is nothing to measure) and the count."""
    if not values:
        return {"p50": None, "p99": None, "count": 0}
    return {
        "p50": round(percentile(values, 50), 1),
        "p99": round(percentile(values, 99), 1),
        "count": len(values),
    }


class View:
    def __init__(
        self,
        world: World,
        tally: Tally,
        conn: psycopg.AsyncConnection[Any],
        client_id: str,
        *,
        live: bool,
    ) -> None:
        self.world = world
        self.tally = tally
        self.conn = conn
        self.client_id = client_id
        self.live = live
        self.started = time.monotonic()
        self._printed = 0  # feed lines already printed (plain mode)

    async def run(self) -> None:
        if not self.live:
            while True:
                await asyncio.sleep(5)
                self._plain(await counters(self.conn, self.client_id))
                print(f"  site: {(await self._site_load()).splitlines()[-1]}", flush=True)
        with Live(console=Console(), refresh_per_second=4, transient=False) as live:
            while True:
                live.update(await self._render())
                await asyncio.sleep(0.5)

    def feed_lines(self) -> list[str]:
        """Feed lines not yet printed (plain mode prints them as they come)."""
        unseen = min(self.tally.said - self._printed, len(self.tally.feed))
        self._printed = self.tally.said
        return self.tally.feed[len(self.tally.feed) - unseen :]

    def _plain(self, c: Counters) -> None:
        for line in self.feed_lines():
            print(f"  {line}", flush=True)
        t = self.tally
        print(
            f"[{time.monotonic() - self.started:5.0f}s] charges running {len(self.world.charges)},"
            f" started {t.started}, stopped {t.webhooks['charge.stopped']},"
            f" failed {t.webhooks['charge.failed']} · {c.readings:,} readings over {c.minutes}"
            f" minutes · webhooks {c.delivered}/{c.webhooks} delivered · dead letters"
            f" {c.dead_letters}",
            flush=True,
        )

    async def _render(self) -> Group:
        c = await counters(self.conn, self.client_id)
        running = list(self.world.charges.values())
        cur = await self.conn.execute(
            "SELECT charge_id, state, energy_wh FROM charges WHERE charge_id = ANY(%s)",
            (running,),
        )
        charges = {r[0]: (r[1], r[2]) for r in await cur.fetchall()}
        outlets = Table(title="outlets", expand=True, pad_edge=False)
        for column in ("outlet", "breaker", "current A", "visit", "charge", "state", "kWh"):
            outlets.add_column(
                column, justify="right" if column in ("current A", "kWh") else "left"
            )
        for cid, site in self.world.sites.items():
            for n, sim in site.outlets.items():
                outlet_id = outlet_id_of(cid, n)
                charge_id = self.world.charges.get(outlet_id)
                state, wh = charges.get(charge_id or "", ("", None))
                plan = self.world.plans.get(outlet_id)
                outlets.add_row(
                    outlet_id,
                    "[green]ON[/]" if sim.breaker_on else "OFF",
                    f"{sim.current_a:.1f}",
                    (plan.kind if plan and charge_id else "car waiting" if sim.car else ""),
                    charge_id or "",
                    state,
                    "" if wh is None else f"{wh / 1000:.2f}",
                )
        for outlet_id, plug in self.world.stations.items():  # the OCPP stations' connectors
            charge_id = self.world.charges.get(outlet_id)
            state, wh = charges.get(charge_id or "", ("", None))
            plan = self.world.plans.get(outlet_id)
            outlets.add_row(
                f"{outlet_id} (OCPP)",
                "[green]transaction[/]" if plug.transaction else "idle",
                f"{plug.current():.1f}",
                plan.kind if plan and charge_id else "",
                charge_id or "",
                state,
                "" if wh is None else f"{wh / 1000:.2f}",
            )
        t = self.tally
        stats = Table.grid(padding=(0, 2))
        stats.add_row(
            f"charges: {len(running)} running, {t.started} started,"
            f" {t.webhooks['charge.stopped']} stopped, {t.webhooks['charge.failed']} failed,"
            f" {sum(t.stopped_wh) / 1000:.1f} kWh delivered"
        )
        stats.add_row(
            f"store: {c.readings:,} outlet readings over {c.minutes} minutes in"
            f" {c.batches:,} batches, dead letters {c.dead_letters}"
        )
        stats.add_row(
            f"webhooks: {c.delivered}/{c.webhooks} delivered, {t.bad_signatures} bad signatures"
            f" · start p50 {_ms(percentiles(t.start_ms)['p50'])}, current rise p50"
            f" {_ms(percentiles(t.rise_ms)['p50'])}"
        )
        feed = "\n".join(self.tally.feed[-12:]) or "waiting for the first car…"
        return Group(
            outlets,
            Panel(await self._site_load(), title="site load: the cap against what the site draws"),
            Panel(stats, title=f"pipeline · {time.monotonic() - self.started:.0f} s"),
            Panel(feed, title="partner's event feed"),
        )

    async def _site_load(self) -> str:
        """The allocator's last periods at the site: the cap line, and the site's current
        as a bar under it (building and outlets), with who charges and who waits."""
        cur = await self.conn.execute(
            "SELECT cap_a, building_a + outlets_a, charging, waiting FROM site_load"
            " WHERE site_id = %s ORDER BY at DESC LIMIT 40",
            (SITE,),
        )
        rows = list(reversed(await cur.fetchall()))
        if not rows:
            return "waiting for the site's allocator (chargeline loads)…"
        return site_load_lines(rows)


BARS = " ▁▂▃▄▅▆▇█"
#: How a charge.failed reason ends for a charge stopped while it waited for its turn.
BEFORE_STARTED = "before it started"


def site_load_lines(rows: list[tuple[float, float, int, int]]) -> str:
    """The cap as a line, the site's current under it as bars (one per period), and the
    latest figures."""
    top = max(max(cap, amps) for cap, amps, _c, _w in rows) or 1.0
    cap_line = "".join("─" for _ in rows)
    bars = "".join(BARS[min(8, round(8 * amps / top))] for _cap, amps, _c, _w in rows)
    cap, amps, charging, waiting = rows[-1]
    return (
        f"cap   {cap_line} {cap:.0f} A\n"
        f"site  {bars} {amps:.0f} A\n"
        f"{charging} charging, {waiting} waiting for their turn"
        f" ({'over' if amps > cap else 'under'} the cap by {abs(cap - amps):.0f} A)"
    )


#: The query the summary suggests (kWh per outlet and day, latest first).
TRY_SQL = (
    "SELECT outlet_id, day, round((energy_wh / 1000)::numeric, 2) AS kwh"
    " FROM energy_outlet_daily ORDER BY day DESC, kwh DESC LIMIT 10"
)


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.0f} ms"


def summary(
    tally: Tally,
    c: Counters,
    *,
    readings_before: int,
    running: int,
    database: str,
    data_dir: Path,
    seconds: float,
    shell: str = "",
) -> dict[str, Any]:
    """The closing figures (also written to ``summary.json`` in the data directory)."""
    return {
        "seconds": round(seconds, 1),
        "charges": {
            "started": tally.started,
            "pending_at_start": tally.pending,
            "stopped": tally.webhooks["charge.stopped"],
            "failed": tally.webhooks["charge.failed"],
            # Load management: charges that waited for room (queued or paused), and those
            # whose resident left (or whose end time came) before their turn.
            "waited": tally.webhooks["charge.paused"],
            "left_before_their_turn": sum(
                n for why, n in tally.endings.items() if BEFORE_STARTED in why
            ),
            "still_running": running,
            "refused": dict(tally.refused),
            # A charge paused before its car drew, then stopped, rightly has none.
            "stopped_without_energy": sum(1 for wh in tally.stopped_wh if wh <= 0)
            - tally.stopped_waiting_without_energy,
            "stopped_while_waiting_without_energy": tally.stopped_waiting_without_energy,
            # Started, never waited, and no current rise heard (the last ones may not be).
            "no_rise_without_waiting": len(tally.started_ids - tally.rose - tally.waited),
            "endings": dict(tally.endings.most_common()),
        },
        "energy_kwh": round(sum(tally.stopped_wh) / 1000, 3),
        "store": {
            "outlet_readings_this_run": c.readings - readings_before,
            "outlet_readings": c.readings,
            "minutes": c.minutes,
            "meter_batches": c.batches,
            "dead_letters": c.dead_letters,
        },
        "webhooks": {
            "written": c.webhooks,
            "delivered": c.delivered,
            "undelivered": c.undelivered,
            "gave_up": c.gave_up,
            "received_by_partner": sum(tally.webhooks.values()),
            "by_type": dict(tally.webhooks),
            "bad_signatures": tally.bad_signatures,
        },
        "latency_ms": {
            "start_to_breaker": percentiles(tally.start_ms),
            "start_to_current_rise": percentiles(tally.rise_ms),
        },
        "database": database,
        "data_dir": str(data_dir),
        "shell": shell,
        "try_sql": TRY_SQL,
    }


def print_summary(s: dict[str, Any]) -> None:
    ch, wh, st, lat = s["charges"], s["webhooks"], s["store"], s["latency_ms"]
    start, rise = lat["start_to_breaker"], lat["start_to_current_rise"]
    print(
        f"""
summary after {s["seconds"]:.0f} s
  charges      {ch["started"]} started at once, {ch["stopped"]} stopped, {ch["failed"]} failed,\
 {ch["still_running"]} still running; {s["energy_kwh"]:.2f} kWh delivered\
 ({ch["stopped_without_energy"]} stopped charges without energy)
  endings      {_endings(ch["endings"])}
  waiting      {ch["waited"]} times a charge waited for room under the site's cap (queued or\
 paused); {ch["left_before_their_turn"]} left before their turn came
  store        {st["outlet_readings_this_run"]:,} outlet readings stored in this run;\
 {st["outlet_readings"]:,} in the database over {st["minutes"]} minutes,\
 {st["meter_batches"]:,} batches, {st["dead_letters"]} dead letters
  webhooks     {wh["delivered"]} of {wh["written"]} delivered, {wh["received_by_partner"]}\
 received and verified by the partner, {wh["bad_signatures"]} bad signatures
  latency      start → breaker ON p50 {_ms(start["p50"])}, p99 {_ms(start["p99"])};\
 start → current-rise webhook p50 {_ms(rise["p50"])}, p99 {_ms(rise["p99"])}
  data         {s["data_dir"]} (summary.json, logs/)
  database     {s["database"]} (stopped with the demo: the command below starts it again)
  try          {s["shell"]} -c \\
                 "{TRY_SQL}"
""",
        flush=True,
    )


def _endings(endings: dict[str, int]) -> str:
    """Every way a charge ended, over-current trips included: "partner stopped 7, …"."""
    return ", ".join(f"{reason} {n}" for reason, n in endings.items()) or "none yet"


def write_summary(s: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(s, indent=2) + "\n", encoding="utf-8")

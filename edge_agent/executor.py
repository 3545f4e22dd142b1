"""Carrying out the reconciler's decisions on one controller's breakers (``Executor``):
switch, persist the memory, then acknowledge and report, in that order; and feeding the
reconciler every sample (its timer, the over-current guard, the current-rise report),
every desired state, status request and cloud time. It never reads the time itself: the
agent's clock is passed in. Its only output to the cloud is ``send(topic, payload)``, which
queues while offline.

Load management (``edge_agent.budget``): every breaker the reconciler wants closed must
also fit the controller's budget. One that does not is *held*: the ON is acknowledged
``queued`` and the breaker stays open until there is room (``resumed``). On every sample
the budget is enforced again: charging outlets that no longer fit are opened (``paused``)
and held ones that fit are closed, in the budget's order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from edge_agent import budget, inbox, reconciler
from edge_agent.clock import Clock
from edge_agent.drivers import BreakerDriver, MeterReader, OutletSample, Sample
from edge_agent.memory import BudgetKeeper, CommandMemory
from edge_agent.reconciler import Acknowledge, CloudClock, Decision, Limits, Report, Switch
from edge_agent.settings import EdgeSettings
from schemas.codec import encode
from schemas.messages import (
    CommandAck,
    CommandOutcome,
    DesiredState,
    EdgeEvent,
    EdgeEventKind,
    LoadReport,
    OutletLoad,
)

log = logging.getLogger(__name__)


class Executor:
    def __init__(
        self,
        settings: EdgeSettings,
        *,
        meter: MeterReader,
        breakers: BreakerDriver,
        clock: Clock,
        send: Callable[[str, bytes], None],
    ) -> None:
        self.cid = settings.controller_id
        self.topics = settings.topics
        self.meter = meter
        self.breakers = breakers
        self.clock = clock
        self._send = send
        self.memory_store = CommandMemory(
            settings.data_dir / "edge" / f"{self.cid}.commands.sqlite"
        )
        self.outlet_numbers = range(1, settings.outlets + 1)
        self.memory = self.memory_store.load(self.outlet_numbers)
        #: Learned from this boot's meter acks only (reconciler rule 5).
        self.cloud_clock = CloudClock()
        #: Per outlet, an ON that arrived before the cloud clock was known.
        self._waiting: dict[int, DesiredState] = {}
        self.limits = Limits(start_max_age_s=settings.start_max_age_s)
        #: Outlets whose desired state has not been seen since boot (they stay OFF till then).
        self._restoring = set(self.outlet_numbers)
        self.current_limits = reconciler.CurrentLimits(
            overcurrent_a=settings.overcurrent_a,
            overcurrent_s=settings.overcurrent_s,
            levels_a=tuple(settings.current_event_levels_a),
        )
        #: Per outlet, the over-current timer and the levels reported (``watch_current``).
        self._watch = {n: reconciler.CurrentWatch() for n in self.outlet_numbers}
        # Load management: the budget, the outlets it holds off, when each breaker moved.
        self.settings = settings
        self.budget = BudgetKeeper(self.memory_store, max_age_s=settings.start_max_age_s)
        self.held: set[int] = set()
        self._moved_at: dict[int, float] = {}
        #: Called when what the controller draws or wants changed (a breaker moved, a
        #: charge queued): the agent then reports its load at once, so that the allocator's
        #: next budget knows of a charge started from the spare room, and keeps room for it.
        self.load_changed: Callable[[], None] = lambda: None

    def open_all(self) -> None:
        """Safety rule 6: after a (re)boot every breaker is OFF until reconciled."""
        for n in self.outlet_numbers:
            self.breakers.switch(n, False)

    def close(self) -> None:
        self.memory_store.close()

    def guard(self, sample: Sample) -> None:
        """Run the reconciler's timer, the over-current guard and the current-rise report
        on every sample."""
        cloud_now = self.cloud_clock.cloud(sample.at)
        for o in sample.outlets:
            memory = self.memory.get(o.outlet)
            if memory is None:
                continue
            self._execute(reconciler.tick(memory, cloud_now=cloud_now))
            seen = reconciler.watch_current(
                self.memory[o.outlet],
                self._watch[o.outlet],
                at=sample.at,
                current_a=o.current_a,
                breaker_on=o.breaker_on,
                limits=self.current_limits,
            )
            self._watch[o.outlet] = seen.watch
            if seen.trip is not None:
                self._execute(seen.trip)
            if seen.crossed_a is not None:  # the fast path: seconds, not the next minute
                at = self.cloud_clock.stamp(sample.at)
                detail = f"rose through {seen.crossed_a:g} A"
                self._send_event(EdgeEventKind.CURRENT_CROSSED, o, at, detail=detail)
        self.enforce(sample)

    def _send_event(
        self,
        kind: EdgeEventKind,
        o: OutletSample,
        at: float,
        *,
        detail: str,
        current_a: float | None = None,
        breaker_on: bool | None = None,
        generation: int | None = None,
    ) -> None:
        """Queue an ``EdgeEvent`` carrying the outlet's reading ``o`` (``at``: cloud time)."""
        event = EdgeEvent(
            controller_id=self.cid,
            at=at,
            kind=kind,
            outlet=o.outlet,
            generation=self.memory[o.outlet].applied_generation
            if generation is None
            else generation,
            current_a=o.current_a if current_a is None else current_a,
            breaker_on=o.breaker_on if breaker_on is None else breaker_on,
            detail=detail,
            energy_wh=round(o.energy_wh, 3),
            voltage_v=o.voltage_v,
        )
        self._send(self.topics.event(self.cid), encode(event))

    def on_status_request(self, payload: bytes) -> None:
        """Answer a status request with a fresh sample of the outlet it names."""
        request = inbox.status_request(self.cid, payload, self.outlet_numbers)
        if request is None:
            return
        sample = self.meter.read(self.clock.now())
        o = next(o for o in sample.outlets if o.outlet == request.outlet)
        at = self.cloud_clock.stamp(sample.at)
        self._send_event(EdgeEventKind.STATUS, o, at, detail=request.request_id)

    def on_desired(self, outlet: int, payload: bytes) -> None:
        want = inbox.desired(self.cid, outlet, payload, self.outlet_numbers)
        if want is not None:
            self._decide(outlet, want)

    def _decide(self, outlet: int, want: DesiredState) -> None:
        restoring = outlet in self._restoring
        decision = reconciler.desired(
            self.memory[outlet],
            want,
            cloud_now=self.cloud_clock.cloud(self.clock.now()),
            limits=self.limits,
            restoring=restoring,
        )
        if decision.waiting:
            if outlet not in self._waiting:
                log.info(
                    "%s: outlet %d: ON (generation %d) waits for the cloud's time"
                    " (the first meter ack); the breaker stays OFF",
                    self.cid,
                    outlet,
                    want.generation,
                )
            self._waiting[outlet] = want
            return
        self._waiting.pop(outlet, None)
        self._restoring.discard(outlet)
        self._execute(decision)

    def learn_cloud_time(self, cloud_at: float) -> None:
        """A meter ack told the cloud's time: learn it, judge the ONs that waited for it,
        and run the timer at once (a better estimate may put a charge past its stop)."""
        was_known = self.cloud_clock.known
        self.cloud_clock.learn(cloud_at, self.clock.now())
        if not was_known:
            log.info(
                "%s: cloud clock learned: offset %+.1f s from this edge's clock",
                self.cid,
                self.cloud_clock.offset,
            )
        for outlet, want in list(self._waiting.items()):
            self._decide(outlet, want)
        if self.budget.retry(cloud_now=self.cloud_clock.cloud(self.clock.now())):
            self.enforce(self.meter.read(self.clock.now()))
        cloud_now = self.cloud_clock.cloud(self.clock.now())
        for memory in list(self.memory.values()):
            self._execute(reconciler.tick(memory, cloud_now=cloud_now))

    def _execute(self, decision: Decision) -> None:
        """Switch, persist, then acknowledge and report: in that order."""
        memory = decision.memory
        self._remember(memory)
        for action in decision.actions:
            if isinstance(action, Switch) and action.on and not self._fits(action.outlet):
                self._hold(action)
                continue
            if isinstance(action, Switch):
                if not action.on:
                    self.held.discard(action.outlet)
                self._moved_at[action.outlet] = self.clock.now()
                feedback = self.breakers.switch(action.outlet, action.on)
                log.info(
                    "%s: outlet %d breaker %s (feedback %s)",
                    self.cid,
                    action.outlet,
                    "ON" if action.on else "OFF",
                    "ON" if feedback else "OFF",
                )
                if action.on and feedback:
                    self._watch[action.outlet] = reconciler.breaker_closed(
                        self._watch[action.outlet]
                    )
                self.load_changed()
                after = reconciler.switched(memory, action, feedback=feedback)
                memory = after.memory
                self._remember(memory)
                self._execute(Decision(memory, after.actions))
            elif isinstance(action, Acknowledge):
                self._acknowledge(action)
            elif isinstance(action, Report):
                self._report(action)

    def _acknowledge(self, action: Acknowledge) -> None:
        sample = self.meter.read(self.clock.now())
        ack = CommandAck(
            controller_id=self.cid,
            outlet=action.outlet,
            generation=action.generation,
            outcome=action.outcome,
            breaker_on=self.breakers.breaker_on(action.outlet),
            at=self.cloud_clock.stamp(sample.at),
            energy_wh=next(o.energy_wh for o in sample.outlets if o.outlet == action.outlet),
        )
        self._send(self.topics.ack(self.cid), encode(ack))

    def _report(self, action: Report) -> None:
        sample = self.meter.read(self.clock.now())
        o = next(o for o in sample.outlets if o.outlet == action.outlet)
        log.info(
            "%s: outlet %d %s: %s",
            self.cid,
            action.outlet,
            action.kind.value,
            action.detail,
        )
        self._send_event(
            action.kind,
            o,
            self.cloud_clock.stamp(sample.at),
            detail=action.detail,
            current_a=action.current_a,
            breaker_on=self.breakers.breaker_on(action.outlet),
            generation=action.generation,
        )

    # --- load management ----------------------------------------------------------------
    def on_budget(self, payload: bytes) -> None:
        got = inbox.budget(self.cid, payload)
        now = self.clock.now()
        if got is not None and self.budget.receive(got, cloud_now=self.cloud_clock.cloud(now)):
            self.enforce(self.meter.read(now))

    def limit(self, local_now: float) -> budget.Limit:
        return self.budget.limit(
            cloud_now=self.cloud_clock.cloud(local_now), safe_share_a=self.settings.safe_share_a
        )

    def _outlets_now(self, sample: Sample | None) -> list[budget.OutletNow]:
        currents = {} if sample is None else {o.outlet: o.current_a for o in sample.outlets}
        return [
            budget.OutletNow(
                n,
                self.memory[n].on,
                self.breakers.breaker_on(n),
                n in self.held,
                currents.get(n, 0.0),
                self.settings.outlet_max_a,
                self._moved_at.get(n),
            )
            for n in self.outlet_numbers
        ]

    def _fits(self, outlet: int) -> bool:
        now = self.clock.now()
        lim = self.limit(now)
        return budget.may_close(
            self._outlets_now(self.meter.read(now)),
            outlet,
            limit_a=lim.amps,
            order=lim.order,
            admit=lim.admit,
            now=now,
            min_off_s=self.settings.min_off_s,
        )

    def _hold(self, action: Switch) -> None:
        """The reconciler wants a breaker closed that does not fit the budget: hold it, and
        acknowledge a new ON as queued (a restored one says nothing until it resumes)."""
        self.held.add(action.outlet)
        self.load_changed()
        log.info(
            "%s: outlet %d waits for room (%s)",
            self.cid,
            action.outlet,
            self.limit(self.clock.now()).why,
        )
        if action.ack is not None and action.ack[1] is CommandOutcome.APPLIED:
            self._acknowledge(Acknowledge(action.outlet, action.ack[0], CommandOutcome.QUEUED))

    def enforce(self, sample: Sample) -> None:
        """Keep to the budget: pause what no longer fits, resume what does (pauses first)."""
        now = self.clock.now()
        lim = self.limit(now)
        plan = budget.plan(
            self._outlets_now(sample),
            limit_a=lim.amps,
            order=lim.order,
            admit=lim.admit,
            now=now,
            min_off_s=self.settings.min_off_s,
        )
        by_outlet = {o.outlet: o for o in sample.outlets}
        at = self.cloud_clock.stamp(sample.at)
        if plan.pause or plan.resume:
            self.load_changed()
        for n in plan.pause:
            self.held.add(n)
            self._moved_at[n] = now
            feedback = self.breakers.switch(n, False)
            log.info("%s: outlet %d paused: %s", self.cid, n, lim.why)
            reason = "site capacity" if lim.admit is not None else "safe share: no valid budget"
            self._send_event(
                EdgeEventKind.PAUSED,
                by_outlet[n],
                at,
                detail=reason,
                current_a=0.0,
                breaker_on=feedback,
            )
        for n in plan.resume:
            self._moved_at[n] = now
            feedback = self.breakers.switch(n, True)
            if not feedback:  # the breaker did not close: the reconciler's rule 7
                self.held.discard(n)
                self._execute(reconciler.switched(self.memory[n], Switch(n, True), feedback=False))
                continue
            self.held.discard(n)
            self._watch[n] = reconciler.breaker_closed(self._watch[n])
            log.info("%s: outlet %d resumed (%s)", self.cid, n, lim.why)
            self._send_event(
                EdgeEventKind.RESUMED, by_outlet[n], at, detail=lim.why, breaker_on=True
            )

    def load_report(self, sample: Sample) -> LoadReport:
        """What this controller draws now, for the site's allocator."""
        return LoadReport(
            controller_id=self.cid,
            at=self.cloud_clock.stamp(sample.at),
            budget_version=self.budget.memory.version,
            modulating=False,
            main_current_a=None,
            outlets=tuple(
                OutletLoad(
                    outlet=o.outlet,
                    current_a=o.current_a,
                    wants=self.memory[o.outlet].on,
                    running=o.breaker_on,
                    max_a=self.settings.outlet_max_a,
                    charge_id=self.memory[o.outlet].charge_id if self.memory[o.outlet].on else None,
                )
                for o in sample.outlets
            ),
        )

    def _remember(self, memory: reconciler.OutletMemory) -> None:
        if self.memory.get(memory.outlet) != memory:
            self.memory_store.save(memory)
            self.memory[memory.outlet] = memory

"""Reconciling one outlet's breaker with the cloud's desired state: a pure state machine.

Theory of operation
-------------------
The cloud publishes, per outlet, one retained ``DesiredState``: ON or OFF, a ``generation``
that only grows, the ``charge_id``, an ``end_at`` and when it was ``issued_at``. The edge
keeps, per outlet and on disk, an ``OutletMemory``: the last generation it applied, whether
that left the breaker ON, and until when. Every decision is a function of that memory, the
message, and the time; the agent executes the returned actions (switch, acknowledge,
report, persist) and feeds back what the breaker's feedback contact says.

Safety rules, in the order they are checked:

1. **A generation applies once.** A desired state whose generation is ≤ the applied one is
   stale or replayed: acknowledged as ``stale``, never acted on. A broker replaying an old
   retained ON after a stop therefore cannot re-energise anything.
2. **Nothing energises after ``end_at``.** An ON whose ``end_at`` has passed is ``expired``.
3. **Nothing new starts late.** An ON issued more than ``start_max_age_s`` ago (the edge was
   offline, or the message sat somewhere) is ``refused_offline``: the partner has long had
   a "pending" or "failed" answer, and a car must not start charging an hour later.
4. **Charges stop by the edge's own timer** at ``end_at``, whether or not the cloud is
   reachable (``tick``).
5. **Clock skew must neither stretch nor revive a charge.** Times in messages are the
   cloud's; the edge's own clock may be minutes or days off. The edge judges every time
   against an estimate of the cloud clock, ``local + offset`` (``CloudClock``), learned
   only from the cloud time in ``meter/ack`` messages: the cloud sends one live for every
   batch, each minute, and never retains it. A command never teaches the clock that judges
   it, and nothing is learned from a previous boot (the local clock may have jumped since).
   Until the first ``meter/ack`` of this boot has arrived the estimate is unknown, and an
   ON *waits* (``Decision.waiting``): the breaker stays OFF, nothing is acknowledged, and
   the agent asks again once the clock is known, when the command is judged by the same
   rules as any other. OFF never waits. The estimate is the largest of the last few samples
   (the least delayed), so it lags the cloud by at most the transit time of the fastest
   recent ack; one ack that sat in a queue cannot pull it back. And the charge's length is
   capped by ``end_at − issued_at`` counted from receipt, so even an error in the estimate
   cannot make a charge longer than the cloud asked for.
6. **After a reboot every breaker is OFF** until its desired state has been seen. The same
   generation ON, still within ``end_at``, is restored (a power cut does not end a charge);
   anything else stays OFF.
7. **A breaker that does not move is reported**, never assumed: every ``Switch`` is followed
   by ``switched`` with the feedback contact's answer, which decides the acknowledged
   outcome (``applied`` or ``breaker_failed``) and records what is really there.
8. **Sustained over-current trips locally** (``overcurrent``): OFF until a new generation.
   "Sustained" is decided by ``watch_current`` on every sample: the current above
   ``overcurrent_a`` with the breaker ON at every sample for ``overcurrent_s`` (edge time;
   a sample below the limit, or with the breaker OFF, starts the count again).

``watch_current`` also decides the fast path for current rise: a rise through one of
``levels_a`` is reported at once (not with the next minute batch), each level once until
the current falls below half of it, and every level is forgotten when the breaker closes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from schemas.messages import CommandOutcome, DesiredState, EdgeEventKind


@dataclass(frozen=True, slots=True)
class OutletMemory:
    """What one outlet has applied; persisted so it survives reboots."""

    outlet: int
    applied_generation: int = 0
    on: bool = False
    charge_id: str | None = None
    #: When the breaker must open, in cloud time (the earlier of ``end_at`` and the cap).
    stop_at: float | None = None


@dataclass(frozen=True, slots=True)
class Switch:
    """Command the breaker, then pass its feedback to ``switched``.

    ``ack``: the generation and outcome to acknowledge once the feedback is known.
    """

    outlet: int
    on: bool
    ack: tuple[int, CommandOutcome] | None = None


@dataclass(frozen=True, slots=True)
class Acknowledge:
    """Publish a ``CommandAck``; ``breaker_on`` comes from the breaker's feedback."""

    outlet: int
    generation: int
    outcome: CommandOutcome


@dataclass(frozen=True, slots=True)
class Report:
    """Publish an ``EdgeEvent`` (the breaker state comes from its feedback)."""

    outlet: int
    kind: EdgeEventKind
    generation: int
    detail: str
    #: The current that caused the report; None: whatever the outlet draws when reported.
    current_a: float | None = None


Action = Switch | Acknowledge | Report


@dataclass(frozen=True, slots=True)
class Decision:
    memory: OutletMemory
    actions: tuple[Action, ...] = ()
    #: An ON that cannot be judged yet (the cloud clock is unknown): ask again once it is.
    waiting: bool = False


@dataclass(frozen=True, slots=True)
class Limits:
    start_max_age_s: float = 120.0


def desired(
    memory: OutletMemory,
    want: DesiredState,
    *,
    cloud_now: float | None,
    limits: Limits = Limits(),
    restoring: bool = False,
) -> Decision:
    """A desired state arrived. ``restoring``: the first one seen for this outlet since boot.

    ``cloud_now`` is None while the cloud clock is unknown: an ON then waits (rule 5)."""
    n, gen = memory.outlet, want.generation
    again = gen == memory.applied_generation  # restoring after a reboot: same command again
    if gen < memory.applied_generation or (again and not restoring):
        return Decision(memory, (Acknowledge(n, gen, CommandOutcome.STALE),))
    if not want.on:
        if again:
            return Decision(replace(memory, on=False), ())
        stopped = OutletMemory(n, gen, False, want.charge_id, None)
        return Decision(stopped, (Switch(n, False, (gen, CommandOutcome.APPLIED)),))
    if cloud_now is None:
        return Decision(memory, (), waiting=True)
    if again:
        # Both what we remembered and what the message says must still allow the charge.
        ends = [t for t in (memory.stop_at, want.end_at) if t is not None]
        if memory.on and all(cloud_now < t for t in ends):
            return Decision(replace(memory, stop_at=min(ends, default=None)), (Switch(n, True),))
        return Decision(replace(memory, on=False), ())
    stop_at = _stop_at(want, cloud_now)
    if stop_at is not None and stop_at <= cloud_now:  # end_at passed, or no time left at all
        return _refuse(memory, gen, CommandOutcome.EXPIRED)
    if cloud_now - want.issued_at > limits.start_max_age_s:
        return _refuse(memory, gen, CommandOutcome.REFUSED_OFFLINE)
    started = OutletMemory(n, gen, True, want.charge_id, stop_at)
    return Decision(started, (Switch(n, True, (gen, CommandOutcome.APPLIED)),))


def _refuse(memory: OutletMemory, gen: int, outcome: CommandOutcome) -> Decision:
    """Record the generation as handled (it never comes back) and make sure we are OFF."""
    off = OutletMemory(memory.outlet, gen, False, None, None)
    return Decision(off, (Switch(memory.outlet, False, (gen, outcome)),))


def _stop_at(want: DesiredState, cloud_now: float) -> float | None:
    if want.end_at is None:
        return None
    # Never longer than the cloud asked for, counted from now, whatever our clock says.
    return min(want.end_at, cloud_now + (want.end_at - want.issued_at))


def tick(memory: OutletMemory, *, cloud_now: float | None) -> Decision:
    """Time passed: stop a charge whose time is up, online or not.

    Without a cloud clock nothing can have been switched ON since boot, so nothing is due."""
    if cloud_now is None:
        return Decision(memory)
    if memory.on and memory.stop_at is not None and cloud_now >= memory.stop_at:
        return _open(memory, EdgeEventKind.BREAKER_SWITCHED, "end_at reached")
    return Decision(memory)


def _open(
    memory: OutletMemory, kind: EdgeEventKind, detail: str, current_a: float | None = None
) -> Decision:
    """The edge opens the breaker on its own and says why."""
    report = Report(memory.outlet, kind, memory.applied_generation, detail, current_a)
    return Decision(replace(memory, on=False, stop_at=None), (Switch(memory.outlet, False), report))


def switched(memory: OutletMemory, switch: Switch, *, feedback: bool) -> Decision:
    """The breaker was told ``switch.on`` and its feedback contact says ``feedback``."""
    actions: list[Action] = []
    if switch.on != feedback:
        detail = (
            f"breaker told {'ON' if switch.on else 'OFF'} but reports {'ON' if feedback else 'OFF'}"
        )
        memory = replace(memory, on=feedback, stop_at=memory.stop_at if feedback else None)
        actions.append(
            Report(memory.outlet, EdgeEventKind.BREAKER_FAILED, memory.applied_generation, detail)
        )
    if switch.ack is not None:
        generation, outcome = switch.ack
        if switch.on != feedback and outcome is CommandOutcome.APPLIED:
            outcome = CommandOutcome.BREAKER_FAILED
        actions.insert(0, Acknowledge(memory.outlet, generation, outcome))
    return Decision(memory, tuple(actions))


def overcurrent(memory: OutletMemory, *, current_a: float, limit_a: float) -> Decision:
    """Sustained current above ``limit_a``: open the breaker until a new generation."""
    detail = f"{current_a:.1f} A sustained above the {limit_a:.1f} A limit"
    return _open(memory, EdgeEventKind.OVERCURRENT_TRIP, detail, current_a)


@dataclass(frozen=True, slots=True)
class CurrentLimits:
    overcurrent_a: float = 20.0
    overcurrent_s: float = 5.0
    levels_a: tuple[float, ...] = (1.0, 2.0, 4.0, 6.0, 10.0)


@dataclass(frozen=True, slots=True)
class CurrentWatch:
    """What the edge remembers of one outlet's current between samples. Kept in memory
    only: after a reboot every breaker is OFF (rule 6), so nothing is above anything."""

    #: Edge time of the first sample of this spell above the limit with the breaker ON.
    over_since: float | None = None
    #: Levels reported and not yet fallen below half.
    levels_high: frozenset[float] = frozenset()


@dataclass(frozen=True, slots=True)
class Watched:
    """``watch_current``'s answer: the watch to keep, the trip to execute (rule 8) if the
    over-current has lasted, and the highest level the current just rose through."""

    watch: CurrentWatch
    trip: Decision | None = None
    crossed_a: float | None = None


def watch_current(
    memory: OutletMemory,
    watch: CurrentWatch,
    *,
    at: float,
    current_a: float,
    breaker_on: bool,
    limits: CurrentLimits,
) -> Watched:
    """One sample of one outlet (edge time ``at``): rule 8's hold timer and the current-rise
    report."""
    trip = None
    over_since = watch.over_since
    if current_a > limits.overcurrent_a and breaker_on:
        over_since = at if over_since is None else over_since
        if at - over_since >= limits.overcurrent_s:
            over_since = None  # a breaker that did not open is counted again
            trip = overcurrent(memory, current_a=current_a, limit_a=limits.overcurrent_a)
    else:
        over_since = None
    high = {level for level in watch.levels_high if current_a >= level / 2}
    crossed = {level for level in limits.levels_a if current_a >= level} - high
    return Watched(
        CurrentWatch(over_since, frozenset(high | crossed)),
        trip,
        max(crossed) if crossed else None,
    )


def breaker_closed(watch: CurrentWatch) -> CurrentWatch:
    """The breaker has just closed: the outlet drew nothing until now, so every level may
    be reported again."""
    return replace(watch, levels_high=frozenset())


class CloudClock:
    """The cloud clock as the edge sees it: ``local + offset``, learned from ``meter/ack``.

    Each ``meter/ack`` carries the cloud's time when it was sent; ``at − local receipt
    time`` is the true offset minus however long the ack took. An ack that sat in a queue
    would pull the estimate back and make a late command look fresh, so the estimate is
    the largest of the last ``WINDOW`` samples (the least delayed one). A real jump of
    either clock is accepted once ``WINDOW`` samples agree. Unknown (None) until the first
    sample: there is no default, and nothing is carried over from a previous boot.
    """

    WINDOW = 5

    def __init__(self) -> None:
        self._samples: list[float] = []

    @property
    def offset(self) -> float | None:
        return max(self._samples, default=None)

    @property
    def known(self) -> bool:
        return bool(self._samples)

    def learn(self, cloud_at: float, received_local: float) -> None:
        self._samples = [*self._samples, cloud_at - received_local][-self.WINDOW :]

    def cloud(self, local: float) -> float | None:
        """The cloud's time now, or None while it is unknown (no ON may be judged)."""
        offset = self.offset
        return None if offset is None else local + offset

    def stamp(self, local: float) -> float:
        """A time to put in a report: the cloud's when known, else the edge's own."""
        offset = self.offset
        return local if offset is None else local + offset

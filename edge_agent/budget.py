"""Keeping one controller within its budget: pure decisions, made every second.

The site's allocator (``charging.allocation``, in the cloud) gives each controller a
``Budget``: the current it may draw, the order in which its outlets should charge, an
expiry, and ``fallback_a``, its static safe share from the registry. The edge enforces it on
its own, from its own measurements, whatever the cloud is doing (DESIGN.md, "Site load
management").

Rules, as the reconciler's for desired states (``edge_agent.reconciler``):

1. **A version applies once.** A budget whose version is not above the last one received
   is stale or replayed and changes nothing.
2. **An expired budget does not apply**, judged by the edge's estimate of the cloud clock;
   while that clock is unknown no budget applies.
3. **A late budget does not apply** either: one issued more than ``max_age_s`` ago.
4. **A budget is never longer than the cloud asked for**: it holds until the earlier of
   ``expires_at`` and ``expires_at − issued_at`` counted from its receipt.
5. **Without a valid budget the controller keeps to its safe share**: the last budget's
   ``fallback_a``, else the edge's own ``safe_share_a`` setting; with neither (a site
   without load management) nothing limits it.

``plan`` then decides, from the limit in force and the outlets' states, which charging
outlets to pause and which paused ones to resume. It walks the outlets in the budget's
order (then by number): a running outlet counts what it draws now (its rating while it has
been on for less than ``ramp_s``, since a car takes a few seconds to draw in full); a paused
one counts its rating and resumes only if that fits and its breaker has been open for
``min_off_s``. A running outlet that no longer fits is paused, whatever its time on: the
site's main breaker comes before a relay's wear (the allocator, which keeps minimum on
times, sizes budgets so that this happens only when something changed). Pauses are carried
out before resumes, so the sum never goes over on the way.
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.messages import Budget


@dataclass(frozen=True, slots=True)
class BudgetMemory:
    """What the edge knows of its budget. ``until``: the cloud time until which ``amps``
    holds (None: no budget holds)."""

    version: int = 0
    amps: float | None = None
    order: tuple[int, ...] = ()
    #: How many of ``order`` may charge while the budget holds.
    admit: int = 0
    until: float | None = None
    fallback_a: float | None = None


def received(
    memory: BudgetMemory, budget: Budget, *, cloud_now: float | None, max_age_s: float
) -> BudgetMemory | None:
    """A budget arrived: the memory to keep, or None when it must wait for the cloud clock
    (it is judged again once the clock is known). A stale one changes nothing."""
    if budget.version <= memory.version:
        return memory  # rule 1
    if cloud_now is None:
        return None  # rule 2: cannot be judged yet
    b = budget
    learned = BudgetMemory(b.version, None, b.order, b.admit, None, b.fallback_a)
    if b.expires_at <= cloud_now or cloud_now - b.issued_at > max_age_s:
        return learned  # rules 2 and 3: its order and safe share still hold
    until = min(b.expires_at, cloud_now + (b.expires_at - b.issued_at))
    return BudgetMemory(b.version, b.amps, b.order, b.admit, until, b.fallback_a)


@dataclass(frozen=True, slots=True)
class Limit:
    amps: float | None  # None: nothing limits this controller
    why: str
    order: tuple[int, ...] = ()
    #: The outlets of ``order`` past the first ``admit`` wait (None: any may, in that order).
    admit: int | None = None


def limit(memory: BudgetMemory, *, cloud_now: float | None, safe_share_a: float | None) -> Limit:
    """The current this controller may draw now, and which outlets may (rules 2, 4 and 5).
    A valid budget admits the outlets the allocator chose; the safe share, any outlet in
    the last budget's order."""
    m = memory
    if m.amps is not None and m.until is not None and cloud_now is not None and cloud_now < m.until:
        return Limit(m.amps, f"site budget {m.amps:g} A", m.order, m.admit)
    if m.fallback_a is not None:
        return Limit(m.fallback_a, f"no valid budget: safe share {m.fallback_a:g} A", m.order)
    if safe_share_a is not None:
        return Limit(safe_share_a, f"no budget yet: safe share {safe_share_a:g} A", m.order)
    return Limit(None, "no load management")


@dataclass(frozen=True, slots=True)
class OutletNow:
    outlet: int
    #: A charge is on the edge's books (the reconciler's memory says ON).
    wants: bool
    running: bool
    #: Held off by the budget (paused or queued); a wanting outlet neither running nor held
    #: is off for another reason (a breaker that failed) and is left alone.
    held: bool
    current_a: float
    max_a: float
    #: Edge time of the breaker's last move (None: not since boot).
    since: float | None


@dataclass(frozen=True, slots=True)
class Plan:
    pause: tuple[int, ...] = ()
    resume: tuple[int, ...] = ()


def ranked(outlets: list[OutletNow], order: tuple[int, ...]) -> list[OutletNow]:
    """The outlets in the budget's order, then the rest by number."""
    place = {n: i for i, n in enumerate(order)}
    return sorted(outlets, key=lambda o: (place.get(o.outlet, len(place)), o.outlet))


def plan(
    outlets: list[OutletNow],
    *,
    limit_a: float | None,
    order: tuple[int, ...],
    now: float,
    min_off_s: float,
    admit: int | None = None,
    ramp_s: float = 10.0,
) -> Plan:
    """Which outlets to pause and which to resume, so that the controller stays within
    ``limit_a`` (module docstring). With ``admit``, the outlets of ``order`` past the first
    ``admit`` wait their turn (the allocator chose others); an outlet not in ``order`` (a
    charge the allocator has not seen yet) may run if it fits. ``now`` is edge time, as the
    outlets' ``since``."""
    if limit_a is None:
        return Plan(resume=tuple(o.outlet for o in outlets if o.wants and o.held))
    waiting = frozenset() if admit is None else frozenset(order[admit:])
    used = 0.0
    pause: list[int] = []
    resume: list[int] = []
    for o in ranked(outlets, order):
        if not o.wants:
            continue
        if o.outlet in waiting:
            if o.running:
                pause.append(o.outlet)
            continue
        if o.running:
            ramping = o.since is not None and now - o.since < ramp_s
            draw = max(o.current_a, o.max_a) if ramping else o.current_a
            if used + draw <= limit_a:
                used += draw
            else:
                pause.append(o.outlet)
        elif o.held:
            rested = o.since is None or now - o.since >= min_off_s
            if rested and used + o.max_a <= limit_a:
                used += o.max_a
                resume.append(o.outlet)
    return Plan(tuple(pause), tuple(resume))


def may_close(
    outlets: list[OutletNow],
    outlet: int,
    *,
    limit_a: float | None,
    order: tuple[int, ...],
    now: float,
    min_off_s: float,
    admit: int | None = None,
) -> bool:
    """Whether a breaker the reconciler wants closed now (a new ON, a restored one) fits:
    the same ``plan``, with that outlet held."""
    asked = [
        OutletNow(o.outlet, True, False, True, 0.0, o.max_a, o.since) if o.outlet == outlet else o
        for o in outlets
    ]
    decided = plan(asked, limit_a=limit_a, order=order, now=now, min_off_s=min_off_s, admit=admit)
    return outlet in decided.resume


def shares(
    outlets: list[OutletNow],
    *,
    limit_a: float | None,
    order: tuple[int, ...],
    min_a: float,
    admit: int | None = None,
) -> dict[int, float]:
    """A modulating controller's (an OCPP station's) limit split among its charging
    connectors, as the allocator splits a site's room: in order, each gets ``min_a`` while
    that fits, then what is left tops them up to their rating in the same order. A connector
    that gets nothing is paused (a limit of 0 A); none gets less than ``min_a``, below which
    a car stops charging (IEC 61851-1)."""
    wanting = [o for o in ranked(outlets, order) if o.wants]
    if limit_a is None:
        return {o.outlet: o.max_a for o in wanting}
    waiting = frozenset() if admit is None else frozenset(order[admit:])
    out: dict[int, float] = {}
    left = limit_a
    for o in wanting:
        first = min(min_a, o.max_a)
        if o.outlet in waiting:
            out[o.outlet] = 0.0
        elif first <= left:
            out[o.outlet] = first
            left -= first
        else:
            out[o.outlet] = 0.0
    for o in wanting:
        if out[o.outlet] > 0 and left > 0:
            extra = min(o.max_a - out[o.outlet], left)
            out[o.outlet] += extra
            left -= extra
    return out

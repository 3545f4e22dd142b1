"""A site's cap in force: pure.

The cap is what the building and every outlet together may draw. By default it is the
contract current (the main breaker, ``contract_current_a``) less a margin (``cap_margin_a``
in the registry, 10 % of the contract when not written). An operator may set it for a time
window: lower for a demand-response event or a maintenance window, higher with a solar
surplus (the panels feed the building, so the grid sees less than the site draws). Windows
may overlap; the one set last wins while it is in force.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from schemas.errors import InputError

REASONS = ("demand_response", "maintenance", "solar_surplus", "manual")
DEFAULT_MARGIN = 0.10
#: A solar surplus raises the cap by at most the contract again.
MAX_SOLAR_FACTOR = 2.0


@dataclass(frozen=True, slots=True)
class Window:
    id: int
    cap_a: float
    starts_at: float
    ends_at: float | None
    reason: str
    set_by: str
    created_at: float


@dataclass(frozen=True, slots=True)
class Cap:
    amps: float
    #: "default (contract 200 A less 20 A)", or the window's reason.
    source: str
    window: int | None = None
    #: When it changes next on its own (a window ends or starts; None: not scheduled).
    until: float | None = None


def default_cap(contract_a: float, margin_a: float | None) -> float:
    margin = contract_a * DEFAULT_MARGIN if margin_a is None else margin_a
    return max(0.0, contract_a - margin)


def in_force(
    *, contract_a: float, margin_a: float | None, windows: Iterable[Window], now: float
) -> Cap:
    """The cap at ``now``: the last-set window in force, else the default."""
    windows = list(windows)
    live = [w for w in windows if w.starts_at <= now and (w.ends_at is None or now < w.ends_at)]
    changes = [t for w in windows for t in (w.starts_at, w.ends_at) if t is not None and t > now]
    until = min(changes, default=None)
    if live:
        w = max(live, key=lambda w: (w.created_at, w.id))
        return Cap(w.cap_a, w.reason, w.id, until)
    default = default_cap(contract_a, margin_a)
    return Cap(
        default, f"default (contract {contract_a:g} A less {contract_a - default:g} A)", None, until
    )


def check_window(
    *,
    contract_a: float,
    cap_a: float,
    starts_at: float,
    ends_at: float | None,
    reason: str,
    now: float,
) -> None:
    """Raise ``InputError`` (naming the field) unless the window is one an operator may set."""
    if reason not in REASONS:
        raise InputError(f"reason {reason!r}: one of {', '.join(REASONS)}", field="reason")
    if not cap_a >= 0:
        raise InputError(f"cap_a {cap_a:g}: must be 0 A or more", field="cap_a")
    top = contract_a * MAX_SOLAR_FACTOR if reason == "solar_surplus" else contract_a
    if cap_a > top:
        why = "twice the contract" if reason == "solar_surplus" else "the contract current"
        raise InputError(
            f"cap_a {cap_a:g} A is above {why} ({top:g} A); only a solar surplus raises the"
            " cap above the contract",
            field="cap_a",
        )
    if ends_at is not None and ends_at <= starts_at:
        raise InputError("ends_at must be after starts_at", field="ends_at")
    if ends_at is not None and ends_at <= now:
        raise InputError(
            "ends_at is in the past: the window would never be in force", field="ends_at"
        )

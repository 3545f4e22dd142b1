"""What a station's meter values say, as chargeline's readings: pure.

OCPP stations report ``MeterValues`` (1.6 and 2.0.1) and the meter values inside a 2.0.1
``TransactionEvent``: a list of timestamped samples, each a list of sampled values with a
measurand, an optional phase, a unit (1.6: ``unit`` with ``Wh``/``kWh``…; 2.0.1:
``unit_of_measure`` with a power-of-ten ``multiplier``), and the value (1.6: a string).
``samples`` turns them into ``Sample``s: energy register in Wh, current in A, voltage in V,
power in W, state of charge in %. Keys are snake_case, as the ``ocpp`` package hands them
to a handler.

Phases: a value without a phase is the connector's; per-phase currents count by their
highest (what a breaker and a threshold see), per-phase voltages by their mean, per-phase
energy and power by their sum. A value that is not a finite number, or a unit that is not
one of these, is skipped and named in ``Sample.skipped`` (the raw frame log keeps it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

ENERGY = "Energy.Active.Import.Register"
CURRENT = "Current.Import"
VOLTAGE = "Voltage"
POWER = "Power.Active.Import"
SOC = "SoC"
#: The measurands the bridge asks stations to send (and reads).
MEASURANDS = (ENERGY, CURRENT, VOLTAGE, POWER, SOC)

#: Unit → (the measurand family it belongs to, the factor to chargeline's unit).
_UNITS = {
    "Wh": (ENERGY, 1.0),
    "kWh": (ENERGY, 1000.0),
    "A": (CURRENT, 1.0),
    "V": (VOLTAGE, 1.0),
    "W": (POWER, 1.0),
    "kW": (POWER, 1000.0),
    "Percent": (SOC, 1.0),
}
_DEFAULT_UNIT = {ENERGY: "Wh", CURRENT: "A", VOLTAGE: "V", POWER: "W", SOC: "Percent"}


@dataclass(frozen=True, slots=True)
class Sample:
    """One timestamped sample of one connector, in chargeline's units (None: not sent)."""

    at: float
    energy_wh: float | None = None
    current_a: float | None = None
    voltage_v: float | None = None
    power_w: float | None = None
    soc_percent: float | None = None
    skipped: tuple[str, ...] = field(default=())


def timestamp(text: str) -> float | None:
    """An OCPP dateTime (RFC 3339) as epoch seconds; None if it is not one."""
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        return None
    return parsed.timestamp()


def samples(meter_values: list[dict[str, Any]]) -> list[Sample]:
    """Every sample in a meter value list, in the order sent (``at`` None: skipped)."""
    out = []
    for entry in meter_values:
        at = timestamp(entry.get("timestamp", ""))
        if at is None:
            continue
        out.append(_sample(at, entry.get("sampled_value", [])))
    return out


def _sample(at: float, values: list[dict[str, Any]]) -> Sample:
    seen: dict[str, list[tuple[str | None, float]]] = {}
    skipped: list[str] = []
    for value in values:
        measurand = value.get("measurand", ENERGY)
        if measurand not in MEASURANDS:
            continue  # other measurands are not read (the raw frame log keeps them)
        if value.get("location", "Outlet") not in ("Outlet", "EV"):
            continue  # the grid side or the cable: not what the car drew
        number = _number(value.get("value"))
        factor = _factor(measurand, value)
        if number is None or factor is None:
            skipped.append(f"{measurand}={str(value.get('value'))[:20]}")
            continue
        phase = value.get("phase")
        if phase is not None and "-N" not in phase and phase not in ("L1", "L2", "L3"):
            continue  # line-to-line voltages and neutral currents are not the connector's
        seen.setdefault(measurand, []).append((phase, number * factor))
    return Sample(
        at=at,
        energy_wh=_combine(seen.get(ENERGY), sum),
        current_a=_combine(seen.get(CURRENT), max),
        voltage_v=_combine(seen.get(VOLTAGE), lambda xs: sum(xs) / len(xs)),
        power_w=_combine(seen.get(POWER), sum),
        soc_percent=_combine(seen.get(SOC), max),
        skipped=tuple(skipped),
    )


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _factor(measurand: str, value: dict[str, Any]) -> float | None:
    """The factor to chargeline's unit, from 1.6's ``unit`` or 2.0.1's ``unit_of_measure``."""
    multiplier = 0
    unit = value.get("unit")
    measure = value.get("unit_of_measure")
    if isinstance(measure, dict):
        unit = measure.get("unit", unit)
        multiplier = measure.get("multiplier", 0)
        if not isinstance(multiplier, int) or isinstance(multiplier, bool):
            return None
    unit = unit or _DEFAULT_UNIT[measurand]
    known = _UNITS.get(unit)
    if known is None or known[0] != measurand:
        return None
    return known[1] * 10.0**multiplier


def _combine(values: list[tuple[str | None, float]] | None, per_phase: Any) -> float | None:
    """The connector's value: the phase-less one if sent, else the phases combined."""
    if not values:
        return None
    whole = [v for phase, v in values if phase is None]
    if whole:
        return whole[-1]
    return float(per_phase([v for _, v in values]))

"""``/v1/usage``: a month of the client's charges, by site and outlet, with fees.

Every figure is a sum of charge records as ``GET /v1/charges`` gives them (each charge's
billed kWh and its fee at the tariff in force when it was requested), so a billing
system that stores the records finds the same totals, to the cent.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from itertools import groupby

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cloud_gateway import context, inputs, repository
from cloud_gateway.models import ClientUsage, CurrencyTotal, OutletUsage, SiteUsage, UsageQuery
from cloud_gateway.repository import UsageRow


async def month(request: Request) -> Response:
    gateway = context.of(request)
    caller = await gateway.authorize(request, "usage:read")
    wanted = inputs.query(request, UsageQuery).month
    async with gateway.pool.connection() as conn:
        rows = await repository.client_usage(conn, caller.client_id, inputs.first_day(wanted))
    sites = [_site(list(group)) for _, group in groupby(rows, key=lambda r: r.site_id)]
    currencies = sorted({s.currency for s in sites})
    totals = [
        CurrencyTotal(currency=c, **_sums(r for r in rows if r.currency == c)) for c in currencies
    ]
    answer = ClientUsage(month=wanted, totals=totals, sites=sites)
    return JSONResponse(answer.model_dump(mode="json"))


def _site(rows: list[UsageRow]) -> SiteUsage:
    first = rows[0]
    return SiteUsage(
        site_id=first.site_id,
        name=first.name,
        timezone=first.timezone,
        currency=first.currency,
        outlets=[OutletUsage(outlet_id=r.outlet_id, **_sums([r])) for r in rows],
        **_sums(rows),
    )


def _sums(rows: Iterable[UsageRow]) -> dict[str, int | float | Decimal]:
    """Charges, kWh and fee of some outlets' rows, summed exactly (decimals)."""
    charges, kwh, fee = 0, Decimal(0), Decimal(0)
    for r in rows:
        charges, kwh, fee = charges + r.charges, kwh + r.energy_kwh, fee + r.fee
    return {"charges": charges, "energy_kwh": float(kwh), "fee": fee}

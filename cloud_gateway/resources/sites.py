"""``/v1/sites``: places to charge, found near a point, by availability now and by kind;
and one site with each outlet's live state."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cloud_gateway import context, inputs, repository
from cloud_gateway.models import LiveOutlet, PlacePage, SiteDetail, SiteSearch
from cloud_gateway.problems import Problem


async def search(request: Request) -> Response:
    gateway = context.of(request)
    await gateway.authorize(request, "sites:read")
    wanted = inputs.query(request, SiteSearch)
    async with gateway.pool.connection() as conn:
        found, after = await repository.search_places(conn, wanted)
    return JSONResponse(PlacePage(sites=found, next_cursor=after).model_dump(mode="json"))


async def detail(request: Request) -> Response:
    gateway = context.of(request)
    await gateway.authorize(request, "sites:read")
    site_id = inputs.site_id(request)
    async with gateway.pool.connection() as conn:
        found = await repository.site_detail(conn, site_id)
    if found is None:
        raise Problem("unknown-site", f"no site {site_id!r}")
    site, outlets = found
    answer = SiteDetail(
        **site,
        outlets=[LiveOutlet(**o) for o in outlets],
    )
    return JSONResponse(answer.model_dump(mode="json"))

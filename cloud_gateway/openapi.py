"""The partner API's OpenAPI 3.1 document, generated from the models that make the bodies.

Request and response schemas come from ``cloud_gateway.models``, webhook payloads from
``schemas.events``, problem types from ``cloud_gateway.problems``: the document cannot say
something the API does not do. ``tests/test_openapi.py`` holds the served document against
a running gateway with schemathesis.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from cloud_gateway import models, problems
from cloud_gateway.clients import SCOPES
from cloud_gateway.settings import GatewaySettings
from schemas import events

_REF = "#/components/schemas/{model}"

#: Response headers, by name.
_HEADERS: dict[str, dict[str, Any]] = {
    "Retry-After": {
        "description": "seconds to wait before the next call",
        "schema": {"type": "integer", "minimum": 1},
    },
    "WWW-Authenticate": {
        "description": "RFC 6750: Bearer, with error (the problem's detail says why)",
        "schema": {"type": "string"},
    },
    "Allow": {"description": "the methods this path accepts", "schema": {"type": "string"}},
    "X-Request-Id": {
        "description": "this call's id in chargeline's logs: the caller's own X-Request-Id"
        " if it sent one of 1-64 letters, digits, '.', '_' or '-', else a new one",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
    },
}
_HEADERS_OF_STATUS = {401: ["WWW-Authenticate"], 403: ["WWW-Authenticate"], 429: ["Retry-After"]}


def _schemas() -> dict[str, Any]:
    requests: list[tuple[type[BaseModel], Any]] = [
        (models.StartCharge, "validation"),
        (models.SetCap, "validation"),
    ]
    answers: list[tuple[type[BaseModel], Any]] = [
        (m, "serialization")
        for m in (
            models.Charge,
            models.OutletStatus,
            models.StatusRequestAccepted,
            models.Usage,
            models.ChargePage,
            models.PlacePage,
            models.SiteDetail,
            models.ClientUsage,
            models.SiteCap,
            models.CapWindow,
            models.ProblemDocument,
        )
    ]
    payloads: list[tuple[type[BaseModel], Any]] = [
        (m, "serialization") for m in dict.fromkeys(events.EVENTS.values())
    ]
    _, top = models_json_schema([*requests, *answers, *payloads], ref_template=_REF)
    schemas: dict[str, Any] = top["$defs"]
    problem = schemas["ProblemDocument"]
    problem["properties"]["type"]["enum"] = [problems.BASE + kind for kind in problems.CATALOGUE]
    problem["properties"]["type"]["description"] = "; ".join(
        f"{kind} ({t.status}): {t.description}" for kind, t in problems.CATALOGUE.items()
    )
    return schemas


def _problem_response(status: int | None) -> dict[str, Any]:
    """A problem answer with ``status`` (its catalogue types named), or None: any other
    (not found, method not allowed, internal error)."""
    kinds = [k for k, t in problems.CATALOGUE.items() if t.status == status]
    answer: dict[str, Any] = {
        "description": "a problem: " + ", ".join(kinds) if kinds else "any other problem",
        "content": {
            problems.MEDIA_TYPE: {"schema": {"$ref": _REF.format(model="ProblemDocument")}}
        },
    }
    names = ["X-Request-Id", *_HEADERS_OF_STATUS.get(status or 0, [])]
    answer["headers"] = {name: _HEADERS[name] for name in names}
    return answer


def _operation(
    operation_id: str,
    summary: str,
    scope: str,
    *,
    ok: dict[int, tuple[str, str]],
    problem_statuses: tuple[int, ...],
    parameters: list[dict[str, Any]] | None = None,
    body: str | None = None,
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        str(status): {
            "description": description,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=model)}}},
            "headers": {"X-Request-Id": _HEADERS["X-Request-Id"]},
        }
        for status, (model, description) in ok.items()
    }
    for status in (401, 403, *problem_statuses, 429):
        responses[str(status)] = _problem_response(status)
    responses["default"] = _problem_response(None)
    operation: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": f"Needs the `{scope}` scope.",
        "security": [{"oauth2": [scope]}],
        "parameters": parameters or [],
        "responses": responses,
    }
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": _REF.format(model=body)}}},
        }
    return operation


def _path(name: str, pattern: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "pattern": pattern},
    }


def _query(model: type[BaseModel]) -> list[dict[str, Any]]:
    """The query parameters ``inputs.query`` reads with ``model``, from its JSON schema."""
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    parameters = []
    for name, declared in schema["properties"].items():
        field = dict(declared)
        field.pop("title", None)
        description = field.pop("description", "")
        # A parameter left out is the model's None: in a query, a value is never null.
        options = [o for o in field.pop("anyOf", []) if o.get("type") != "null"]
        if options:
            field.update(options[0])
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": name in required,
                "description": description,
                "schema": field,
            }
        )
    return parameters


def _webhooks() -> dict[str, Any]:
    signature_headers = [
        {
            "name": "webhook-id",
            "in": "header",
            "required": True,
            "description": "the event's id (also the body's id): de-duplicate on it",
            "schema": {"type": "string"},
        },
        {
            "name": "webhook-timestamp",
            "in": "header",
            "required": True,
            "description": "Unix seconds when this delivery was signed",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
        {
            "name": "webhook-signature",
            "in": "header",
            "required": True,
            "description": "Standard Webhooks: space-separated 'v1,<base64 HMAC-SHA256>',"
            " one per secret in force (two during a rotation)",
            "schema": {"type": "string"},
        },
    ]
    out: dict[str, Any] = {}
    for kind, model in events.EVENTS.items():
        envelope = {
            "type": "object",
            "required": ["id", "type", "created_at", "data"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string", "description": "evt_…, equal to webhook-id"},
                "type": {"const": kind},
                "created_at": {"type": "number", "description": "epoch seconds"},
                "data": {"$ref": _REF.format(model=model.__name__)},
            },
        }
        out[kind] = {
            "post": {
                "operationId": "webhook_" + kind.replace(".", "_"),
                "summary": (model.__doc__ or kind).strip().splitlines()[0],
                "parameters": signature_headers,
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": envelope}},
                },
                "responses": {
                    "2XX": {"description": "delivered; anything else is retried for 72 h"}
                },
            }
        }
    return out


def document(settings: GatewaySettings) -> dict[str, Any]:
    """The served OpenAPI 3.1 document: paths from the models, the problem catalogue and
    the webhook contract."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "chargeline partner API",
            "version": "1",
            "description": "Errors are RFC 9457 problem documents; webhooks are signed as"
            " the Standard Webhooks specification says.",
        },
        "components": {
            "securitySchemes": {
                "oauth2": {
                    "type": "oauth2",
                    "description": "client credentials (client_secret_basic or"
                    " client_secret_post); RFC 9068 JWT access tokens",
                    "flows": {
                        "clientCredentials": {
                            "tokenUrl": f"{settings.issuer}/oauth2/token",
                            "scopes": dict(SCOPES),
                        }
                    },
                }
            },
            "schemas": _schemas(),
        },
        "paths": {**_charge_paths(), **_outlet_paths(), **_site_paths(), **_usage_paths()},
        "webhooks": _webhooks(),
    }


def _charge_paths() -> dict[str, Any]:
    charge_id = _path("charge_id", models.CHARGE_ID_PATTERN, "the partner's id for the charge")
    charge = "Charge"
    return {
        "/v1/charges": {
            "post": _operation(
                "startCharge",
                "Start a charge (idempotent on charge_id)",
                "charges:write",
                ok={
                    200: (charge, "this request was made before: the charge as it is"),
                    201: (charge, "the breaker closed"),
                    202: (
                        charge,
                        "sent; the breaker has not answered yet (requested), or the charge"
                        " waits for room under the site's cap (queued)",
                    ),
                },
                problem_statuses=(404, 409, 413, 422, 503),
                body="StartCharge",
            ),
            "get": _operation(
                "listCharges",
                "This client's charges, newest request first, with energy, fee and meter"
                " readings (paged by cursor)",
                "charges:read",
                ok={200: ("ChargePage", "a page of charges")},
                problem_statuses=(422,),
                parameters=_query(models.ChargeSearch),
            ),
        },
        "/v1/charges/{charge_id}": {
            "get": _operation(
                "getCharge",
                "Read a charge",
                "charges:read",
                ok={200: (charge, "the charge")},
                problem_statuses=(404,),
                parameters=[charge_id],
            )
        },
        "/v1/charges/{charge_id}/stop": {
            "post": _operation(
                "stopCharge",
                "Stop a charge (idempotent)",
                "charges:write",
                ok={200: (charge, "the charge, stopping or stopped")},
                problem_statuses=(404, 503),
                parameters=[charge_id],
            )
        },
    }


def _outlet_paths() -> dict[str, Any]:
    outlet_id = _path("outlet_id", models.OUTLET_ID_PATTERN, "the outlet's public id")
    return {
        "/v1/outlets/{outlet_id}/status": {
            "get": _operation(
                "getOutletStatus",
                "The outlet's last known status",
                "outlets:read",
                ok={200: ("OutletStatus", "the last stored minute and the controller")},
                problem_statuses=(404,),
                parameters=[outlet_id],
            )
        },
        "/v1/outlets/{outlet_id}/status-requests": {
            "post": _operation(
                "requestOutletStatus",
                "Ask for a fresh status; it arrives as an outlet.status webhook",
                "outlets:read",
                ok={202: ("StatusRequestAccepted", "sent to the controller")},
                problem_statuses=(404, 503),
                parameters=[outlet_id],
            )
        },
        "/v1/outlets/{outlet_id}/usage": {
            "get": _operation(
                "getOutletUsage",
                "A month of this client's charges on the outlet: kWh, count, fee",
                "usage:read",
                ok={200: ("Usage", "the month's totals")},
                problem_statuses=(404, 422),
                parameters=[outlet_id, *_query(models.UsageQuery)],
            )
        },
    }


def _site_paths() -> dict[str, Any]:
    site_id = _path("site_id", models.SITE_ID_PATTERN, "the site's public id")
    return {
        "/v1/sites": {
            "get": _operation(
                "searchSites",
                "Places to charge: near a point (nearest first), available now, by kind",
                "sites:read",
                ok={200: ("PlacePage", "a page of sites with their outlets")},
                problem_statuses=(422,),
                parameters=_query(models.SiteSearch),
            )
        },
        "/v1/sites/{site_id}": {
            "get": _operation(
                "getSite",
                "A site with each outlet's live state",
                "sites:read",
                ok={200: ("SiteDetail", "the site")},
                problem_statuses=(404,),
                parameters=[site_id],
            )
        },
        "/v1/sites/{site_id}/caps": {
            "get": _operation(
                "getSiteCap",
                "The site's cap in force, its windows, and its load as last measured",
                "sites:read",
                ok={200: ("SiteCap", "the cap")},
                problem_statuses=(404,),
                parameters=[site_id],
            ),
            "post": _operation(
                "setSiteCap",
                "Operator: set the site's cap for a window (a demand-response event, a"
                " maintenance window, a solar surplus); recorded with the client that set it",
                "sites:write",
                ok={201: ("CapWindow", "the window, in force from starts_at")},
                problem_statuses=(404, 413, 422),
                parameters=[site_id],
                body="SetCap",
            ),
        },
        "/v1/sites/{site_id}/caps/{window_id}": {
            "delete": _operation(
                "removeSiteCap",
                "Operator: remove a cap window; recorded with the client that removed it",
                "sites:write",
                ok={200: ("SiteCap", "the site's cap after the removal")},
                problem_statuses=(404,),
                parameters=[
                    site_id,
                    {
                        "name": "window_id",
                        "in": "path",
                        "required": True,
                        "description": "the window's id",
                        "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
                    },
                ],
            )
        },
    }


def _usage_paths() -> dict[str, Any]:
    return {
        "/v1/usage": {
            "get": _operation(
                "getUsage",
                "A month of this client's charges: totals per currency, per site, per outlet",
                "usage:read",
                ok={200: ("ClientUsage", "the month; each figure a sum of charge records")},
                problem_statuses=(422,),
                parameters=_query(models.UsageQuery),
            )
        }
    }

"""The OpenAPI 3.1 document (`/api/schema/`, Swagger UI at `/api/docs/`): the fixed endpoints,
and one operation per active offer and deal with its exact inputs and its price.

drf-spectacular serves and renders it, but cannot read our views (they answer the dicts of
representations.py, not serializers), so the operations are written here, by two hooks of
SPECTACULAR_SETTINGS: `leave_described_endpoints` keeps AutoSchema off the routes described
here, and `describe_api` writes them, the catalog's included. A route of api/http/urls.py that
is not described here still shows, as AutoSchema guesses it (tests/api/test_openapi.py fails).

The document follows the catalog without a restart: each process keeps it rendered for one
`catalog_version`, a fingerprint of the catalog's rows read in four small queries per GET, so
a save or delete in any process (the admin, `catalog import`, a shell) shows in the next GET.
"""

import base64
import hashlib
import re
import threading
from collections.abc import Callable
from importlib import metadata

from csp.decorators import csp_update
from django.conf import settings
from django.db.models import Count, Max
from django.http import HttpResponse
from django.template.loader import get_template
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.permissions import AllowAny

from api import selectors
from api.http.representations import deal_repr, offer_repr
from api.http.throttling import AnonymousThrottle
from api.models import ServiceDeal, ServiceDealAddon, ServiceDealItem, ServiceOffer
from infra.strict_json import INT64_MAX, INT64_MIN

KEY_REQUIRED = [{"ApiKey": []}]
STATUSES = ["queued", "running", "succeeded", "failed", "canceled", "expired"]
EVENT_NAMES = ["start", "completed"]
PIPELINES = [None, "overwrite", "extend", "pass_through"]
# What each error code means, for the answers' descriptions (docs/api.md has the details).
CODES = {
    "invalid_json": "the body is not strict JSON, or not an object",
    "invalid_body": "a deal's body has other keys, or inputs / addons of the wrong type",
    "missing_inputs": "inputs the operation needs are absent (`fields`)",
    "unknown_inputs": "inputs it does not take (`fields`)",
    "invalid_inputs": "values that are not fitting scalars (`fields`), or too many (`limit`)",
    "unknown_addons": "add-ons that are not the deal's (`fields`)",
    "invalid_webhook": "the webhook URL or events are refused",
    "invalid_idempotency_key": "Idempotency-Key is not 1-255 printable ASCII characters",
    "not_authenticated": "no valid API key",
    "insufficient_credits": "the balance is short of the price (`balance`, `price`)",
    "key_budget_exceeded": "the key's budget is spent (`budget`, `spent`, `price`)",
    "key_not_allowed": "the key may not call this offer or deal",
    "forbidden": "the key lacks `can_manage_keys`",
    "not_found": "no such offer, deal, request or key (of yours)",
    "not_cancelable": "the request has ended (`status_now`) or is a deal's item (`parent`)",
    "key_limit_reached": "100 active keys already",
    "idempotency_conflict": "the Idempotency-Key was used with another request",
    "idempotency_in_progress": "the Idempotency-Key's first request is still running",
    "length_required": "a chunked body this server cannot read: send a Content-Length",
    "payload_too_large": "the body is larger than `limit` bytes",
    "rate_limited": "too many requests: retry after `Retry-After` seconds",
    "unavailable": "a backing store did not answer; nothing was done, retry shortly",
}
IDEMPOTENCY_CODES = {400: ["invalid_idempotency_key"]}
IDEMPOTENCY_409 = ["idempotency_conflict", "idempotency_in_progress"]
INTAKE_CODES = {
    400: ["invalid_json", "missing_inputs", "unknown_inputs", "invalid_inputs", "invalid_webhook"],
    402: ["insufficient_credits", "key_budget_exceeded"],
    403: ["key_not_allowed"],
    404: ["not_found"],
    411: ["length_required"],
    413: ["payload_too_large"],
}
DEAL_CODES = {400: ["invalid_body", "unknown_addons"]}
# Error answers several operations give: in components.responses, referred to by name.
SHARED_ERRORS = {
    "OfferRefused": (400, [*INTAKE_CODES[400], "invalid_idempotency_key"]),
    "DealRefused": (400, [*INTAKE_CODES[400], *DEAL_CODES[400], "invalid_idempotency_key"]),
    "NotAuthenticated": (401, ["not_authenticated"]),
    "PaymentRequired": (402, INTAKE_CODES[402]),
    "KeyNotAllowed": (403, ["key_not_allowed"]),
    "Forbidden": (403, ["forbidden"]),
    "NotFound": (404, ["not_found"]),
    "IdempotencyConflict": (409, IDEMPOTENCY_409),
    "LengthRequired": (411, ["length_required"]),
    "PayloadTooLarge": (413, ["payload_too_large"]),
    "RateLimited": (429, ["rate_limited"]),
    "Unavailable": (503, ["unavailable"]),
}
# The codes whose answers carry Retry-After.
RETRY_AFTER_CODES = {"rate_limited", "idempotency_in_progress"}


# --- schemas -------------------------------------------------------------------------------


def _ref(name: str, kind: str = "schemas") -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def _string(description: str = "", **more) -> dict:
    return {"type": "string", **({"description": description} if description else {}), **more}


def _nullable(kind: str, **more) -> dict:
    return {"type": [kind, "null"], **more}


def _object(properties: dict, *, optional: tuple = (), **more) -> dict:
    required = [name for name in properties if name not in optional]
    return {"type": "object", "properties": properties, "required": required, **more}


TIME = _string(format="date-time")
MAYBE_TIME = _nullable("string", format="date-time")
INTEGER = {"type": "integer"}
COUNT = {"type": "integer", "minimum": 0}
STRINGS = {"type": "array", "items": {"type": "string"}}
# A stored input: what check_inputs (api/services/requests.py) lets in.
STORED_INPUT = {"type": ["string", "number", "boolean"]}

REQUEST = _object(
    {
        "id": _string("sha256 of the caller, the offer or deal and the inputs (docs/api.md)"),
        "kind": {"enum": ["offer", "deal"]},
        "service": _string("`deal` for a deal"),
        "action": _string("the deal's name for a deal"),
        "status": {"enum": STATUSES},
        "inputs": {"type": "object", "additionalProperties": STORED_INPUT},
        "price": {**COUNT, "description": "credits held, charged on success (items: 0)"},
        "results": {
            "type": "array",
            "description": "`create_qty` results once succeeded; a deal's: one list per child",
        },
        "error": _nullable(
            "object",
            required=["code", "message"],
            properties={"code": _string(), "message": _string()},
            description="why it failed, was canceled or expired (docs/api.md, codes)",
        ),
        "attempts": COUNT,
        "tries": {**COUNT, "description": "upstream tries of its handler calls"},
        "handler_used": _nullable("string", description="set once succeeded"),
        "created_at": TIME,
        "started_at": MAYBE_TIME,
        "finished_at": MAYBE_TIME,
        "expires_at": MAYBE_TIME,
        "url": _string(),
        "urls": _object({"get": _string(), "cancel": _string(), "events": _string()}),
        "queue_position": _nullable(
            "integer", minimum=0, description="while queued: jobs ahead of it in its queue"
        ),
        "children": {"type": "array", "items": _ref("Request"), "description": "a deal's"},
        "parent": _nullable("string", description="the deal of an item"),
        "cancel_requested": {"type": "boolean"},
        "addons": {**STRINGS, "description": "a deal: the selected add-ons"},
        "position": {**COUNT, "description": "an item: its place in the deal"},
        "pipeline": _nullable("string", enum=PIPELINES),
        "addon": {"type": "boolean"},
        "parent_url": _string(),
    },
    optional=("addons", "position", "pipeline", "addon", "parent_url"),
)
ERROR = _object(
    {
        "error": _object(
            {
                "code": _string(),
                "message": _string(),
                "fields": {**STRINGS, "description": "the inputs, fields or add-ons at fault"},
            },
            optional=("fields",),
            description="some codes add keys: `limit`, `retry_after`, `balance`, `price`, "
            "`budget`, `spent`, `status_now`, `parent`",
        )
    }
)
LIMITS = {
    "allowed": {**STRINGS, "maxItems": 50},
    "budget": _nullable("integer", minimum=1),
    "budget_period": {"enum": ["day", "week", "month"]},
    "rate_per_minute": _nullable("integer", minimum=1),
    "max_in_flight": _nullable("integer", minimum=1),
}
KEY_SCHEMA = _object(
    {
        "id": INTEGER,
        "name": _string(),
        "display": _string(examples=["svc_live_AbCd…wxyz"]),
        "environment": {"enum": ["live", "test"]},
        "state": {"enum": ["active", "revoked", "expired"]},
        "can_manage_keys": {"type": "boolean"},
        "created_at": TIME,
        "last_used_at": MAYBE_TIME,
        "expires_at": MAYBE_TIME,
        "revoked_at": MAYBE_TIME,
        "limits": _object(LIMITS),
        "usage": _object(
            {"period_start": TIME, "period_end": TIME, "spent": COUNT, "in_flight": COUNT}
        ),
    }
)
KEY_CREATE = _object(
    {
        # DRF's CharField: trimmed, then not blank, no NUL.
        "name": _string(maxLength=100, pattern="^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"),
        "can_manage_keys": {"type": "boolean", "default": False},
        "allowed": {
            "type": "array",
            "items": _string(maxLength=120, pattern="^\\s*(\\*|[^/\\u0000]*/[^/\\u0000]*)\\s*$"),
            "maxItems": 50,
            "description": '"service/action" patterns (`*` matches anything: "text/*") and '
            '"deal/<name>"; empty: all',
        },
        "budget": {"type": "integer", "minimum": 1, "maximum": 10**15},
        "budget_period": {"enum": ["day", "week", "month"], "default": "month"},
        "rate_per_minute": {"type": "integer", "minimum": 1, "maximum": 10**6},
        "max_in_flight": {"type": "integer", "minimum": 1, "maximum": 10**6},
        "expires_in_days": {"type": "integer", "minimum": 1, "maximum": 3650},
    },
    optional=(
        "can_manage_keys",
        "allowed",
        "budget",
        "budget_period",
        "rate_per_minute",
        "max_in_flight",
        "expires_in_days",
    ),
    additionalProperties=False,
)
ACCOUNT = _object(
    {
        "balance": COUNT,
        "held": COUNT,
        "transactions": {
            "type": "array",
            "description": "newest first, the last 100",
            "items": _object(
                {
                    "kind": {"enum": ["grant", "hold", "capture", "release"]},
                    "amount": INTEGER,
                    "request_id": _nullable("string"),
                    "note": _string(),
                    "created_at": TIME,
                }
            ),
        },
        "keys": {"type": "array", "items": _ref("Key")},
    }
)
CATALOG_OFFER = _object(
    {
        "service": _string(),
        "action": _string(),
        "url": _string(),
        "description": _string(),
        "inputs": STRINGS,
        "price": COUNT,
        "create_qty": COUNT,
        "expiration": _nullable("integer"),
    }
)
CATALOG_DEAL = _object(
    {
        "name": _string(),
        "url": _string(),
        "description": _string(),
        "inputs": STRINGS,
        "price": {**COUNT, "description": "of the items, without add-ons"},
        "fixed_price": _nullable("integer"),
        "price_modifier": COUNT,
        "offers": {
            "type": "array",
            "items": _object(
                {
                    "offer": _string(),
                    "pipeline": _nullable("string", enum=PIPELINES),
                    "price": COUNT,
                }
            ),
        },
        "addons": {
            "type": "array",
            "items": _object({"offer": _string(), "inputs": STRINGS, "price": COUNT}),
        },
        "addons_modifier": COUNT,
    }
)
WEBHOOK = _object(
    {
        "url": _nullable("string", format="uri", description="the account's default webhook"),
        "events": {"type": "array", "items": {"enum": EVENT_NAMES}},
        "has_secret": {"type": "boolean", "description": "a signing secret was given out"},
    }
)
WEBHOOK_SET = _object(
    {
        "url": _string("https, public", format="uri", maxLength=2048),
        "events": {
            "type": "array",
            "items": {"enum": EVENT_NAMES},
            "uniqueItems": True,
            "minItems": 1,
            "default": ["completed"],
        },
    },
    optional=("events",),
    additionalProperties=False,
)
WEBHOOK_SECRET = _object(
    {
        "secret": _string("shown this once", pattern="^whsec_"),
        "previous_valid_until": {
            **MAYBE_TIME,
            "description": "until when the previous secret still signs too",
        },
    }
)
SCHEMAS = {
    "Request": REQUEST,
    "Error": ERROR,
    "Key": KEY_SCHEMA,
    "KeyCreated": {
        "allOf": [_ref("Key"), _object({"key": _string("the secret, shown this once")})]
    },
    "KeyCreate": KEY_CREATE,
    "Account": ACCOUNT,
    "Catalog": _object(
        {
            "offers": {"type": "array", "items": _ref("CatalogOffer")},
            "deals": {"type": "array", "items": _ref("CatalogDeal")},
        }
    ),
    "CatalogOffer": CATALOG_OFFER,
    "CatalogDeal": CATALOG_DEAL,
    "Webhook": WEBHOOK,
    "WebhookSet": WEBHOOK_SET,
    "WebhookSecret": WEBHOOK_SECRET,
}


def input_schema() -> dict:
    """One input of an offer or deal: a scalar `check_inputs` takes (finite; strings without
    NUL, at most SVC_MAX_INPUT_CHARS characters; integers within 64 bits)."""
    return {
        "type": ["string", "number", "boolean"],
        "maxLength": settings.SVC_MAX_INPUT_CHARS,
        "pattern": "^[^\\u0000]*$",
        "minimum": INT64_MIN,
        "maximum": INT64_MAX,
        "description": "a string, a number or a boolean",
    }


def inputs_schema(names: list[str], *, optional: tuple = ()) -> dict:
    scalar = _ref("Input")
    return _object({name: scalar for name in names}, optional=optional, additionalProperties=False)


# --- parameters, headers and answers -------------------------------------------------------


def _header(description: str, schema: dict) -> dict:
    return {"description": description, "schema": schema}


def components() -> dict:
    wait = settings.SVC_MAX_WAIT_SECONDS
    return {
        "schemas": {**SCHEMAS, "Input": input_schema()},
        "securitySchemes": {
            "ApiKey": {
                "type": "http",
                "scheme": "bearer",
                "description": "`Authorization: Bearer <API key>` (`svc_live_…`, or "
                "`svc_test_…` on a test deployment); `Token <API key>` is taken too.",
            }
        },
        "parameters": {
            "RequestId": _path("request_id", _string(minLength=1, maxLength=64)),
            "KeyId": _path("key_id", {"type": "integer", "minimum": 1, "maximum": INT64_MAX}),
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "description": "Send the POST again with the same key and get the first answer "
                "(status included, `Idempotent-Replayed: true`), nothing done twice; kept "
                f"{settings.SVC_IDEMPOTENCY_TTL} s, per client.",
                "schema": _string(minLength=1, maxLength=255, pattern="^[\\x20-\\x7e]+$"),
            },
            "Prefer": {
                "name": "Prefer",
                "in": "header",
                "description": "`wait=N`: answer once the request has ended or after N seconds "
                f"(at most {wait}: more counts as {wait}; plain `wait`: {wait}), with "
                "`Preference-Applied`.",
                "schema": _string(pattern="^wait(=[0-9]{1,9})?$"),
            },
            "Webhook": {
                "name": "webhook",
                "in": "query",
                "description": "Where to POST this request's events, signed (Standard "
                "Webhooks); https and public. Default: the account's webhook, if any.",
                "schema": _string(format="uri", maxLength=2048),
            },
            "WebhookEvents": {
                "name": "webhook_events",
                "in": "query",
                "description": "Comma-separated: `start`, `completed` (default `completed`). "
                "Without `webhook`, for the account's webhook (none: `400 invalid_webhook`).",
                "schema": _string(pattern="^(start|completed)(,(start|completed))*$"),
            },
            "LastEventId": {
                "name": "Last-Event-ID",
                "in": "header",
                "description": "Resume after this event (an EventSource sends it itself).",
                "schema": _string(),
            },
        },
        "headers": {
            "PreferenceApplied": _header("`wait=N` when the answer waited", _string()),
            "RetryAfter": _header("seconds to wait", INTEGER),
            "IdempotentReplayed": _header("`true` on a replayed answer", _string()),
        },
        "responses": {
            **{name: _error_answer(codes) for name, (_status, codes) in SHARED_ERRORS.items()},
            **_intake_answers(),
        },
    }


def _path(name: str, schema: dict) -> dict:
    return {"name": name, "in": "path", "required": True, "schema": schema}


def _json(schema: dict) -> dict:
    return {"application/json": {"schema": schema}}


def _error_answer(codes: list[str]) -> dict:
    description = "; ".join(f"`{code}`: {CODES[code]}" for code in codes)
    schema = {
        "allOf": [_ref("Error")],
        "properties": {"error": {"properties": {"code": {"enum": codes}}}},
    }
    answer = {"description": description, "content": _json(schema)}
    if RETRY_AFTER_CODES & set(codes):
        answer["headers"] = {"Retry-After": _ref("RetryAfter", "headers")}
    return answer


_SHARED_BY_CODES = {
    (status, tuple(sorted(codes))): name for name, (status, codes) in SHARED_ERRORS.items()
}


def _error(status: int, codes: list[str]) -> dict:
    name = _SHARED_BY_CODES.get((status, tuple(sorted(codes))))
    return _ref(name, "responses") if name else _error_answer(codes)


def _answer(description: str, schema: dict | None = None, **more) -> dict:
    return {"description": description, **({"content": _json(schema)} if schema else {}), **more}


def _errors(codes: dict[int, list[str]], *, client: bool = True) -> dict:
    """The error answers: `codes` by status, plus 429, and 401 and 503 for a client's."""
    if client:
        codes = _merge(codes, {401: ["not_authenticated"], 503: ["unavailable"]})
    codes = _merge(codes, {429: ["rate_limited"]})
    return {str(status): _error(status, found) for status, found in sorted(codes.items())}


def _merge(*code_maps: dict[int, list[str]]) -> dict[int, list[str]]:
    merged: dict[int, list[str]] = {}
    for codes in code_maps:
        for status, found in codes.items():
            merged.setdefault(status, []).extend(c for c in found if c not in merged[status])
    return merged


def _operation(
    operation_id: str,
    tag: str,
    summary: str,
    answers: dict,
    *,
    codes: dict | None = None,
    parameters: tuple = (),
    body: dict | None = None,
    description: str = "",
    post: bool = False,
) -> dict:
    """An operation of a client (key required); a POST takes an Idempotency-Key."""
    codes = codes or {}
    if post:
        parameters = (*parameters, _ref("IdempotencyKey", "parameters"))
        codes = _merge(codes, IDEMPOTENCY_CODES, {409: IDEMPOTENCY_409})
    operation = {"operationId": operation_id, "tags": [tag], "summary": summary}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = list(parameters)
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = {**answers, **_errors(codes)}
    operation["security"] = KEY_REQUIRED
    return operation


# --- the fixed endpoints -------------------------------------------------------------------


def fixed_paths() -> dict[str, dict]:
    request_id = _ref("RequestId", "parameters")
    key_id = _ref("KeyId", "parameters")
    request = _ref("Request")
    webhook = _json(_ref("Webhook"))
    return {
        "/svc/": {"get": _catalog_operation()},
        "/svc/request/{request_id}/": {
            "get": _operation(
                "request_get",
                "requests",
                "A request of yours, a deal with its items",
                {"200": _answer("The request", request)},
                codes={404: ["not_found"]},
                parameters=(request_id,),
            )
        },
        "/svc/request/{request_id}/cancel/": {
            "post": _operation(
                "request_cancel",
                "requests",
                "Cancel a queued or running request (its hold is released)",
                {
                    "200": _answer("Canceled", request),
                    "202": _answer("Running: it is being stopped (`cancel_requested`)", request),
                },
                codes={404: ["not_found"], 409: ["not_cancelable"]},
                parameters=(request_id,),
                post=True,
            )
        },
        "/svc/request/{request_id}/events/": {"get": _events_operation(request_id)},
        "/svc/account/": {
            "get": _operation(
                "account_get",
                "account",
                "Balance, held credits, the last transactions and your keys",
                {"200": _answer("The account", _ref("Account"))},
            )
        },
        "/svc/account/keys/": {
            "get": _operation(
                "keys_list",
                "keys",
                "Your API keys",
                {
                    "200": _answer(
                        "The keys", _object({"keys": {"type": "array", "items": _ref("Key")}})
                    )
                },
                codes={403: ["forbidden"]},
            ),
            "post": _operation(
                "key_create",
                "keys",
                "A new API key, its secret answered this once",
                {"201": _answer("Created", _ref("KeyCreated"))},
                codes={
                    400: ["invalid_json", "invalid_inputs"],
                    403: ["forbidden"],
                    409: ["key_limit_reached"],
                    411: ["length_required"],
                    413: ["payload_too_large"],
                },
                body={"required": True, "content": _json(_ref("KeyCreate"))},
                post=True,
            ),
        },
        "/svc/account/keys/{key_id}/": {
            method: _operation(
                operation_id,
                "keys",
                summary,
                {"200": _answer("The key", _ref("Key"))},
                codes={403: ["forbidden"], 404: ["not_found"]},
                parameters=(key_id,),
            )
            for method, operation_id, summary in (
                ("get", "key_get", "One of your API keys"),
                ("delete", "key_revoke", "Revoke one of your API keys"),
            )
        },
        "/svc/account/webhook_secret/": {
            "post": _operation(
                "webhook_secret_rotate",
                "webhooks",
                "A new webhook signing secret (both sign for 24 h after a rotation)",
                {"201": _answer("The new secret, shown this once", _ref("WebhookSecret"))},
                codes={403: ["forbidden"]},
                post=True,
            )
        },
        "/svc/account/webhook/": {
            "get": _operation(
                "webhook_get", "webhooks", "Your default webhook", {"200": _answer("It", webhook)}
            ),
            "put": _operation(
                "webhook_set",
                "webhooks",
                "Set your default webhook (for intakes that name none)",
                {"200": _answer("It", webhook)},
                codes={
                    400: ["invalid_json", "invalid_inputs", "invalid_webhook"],
                    403: ["forbidden"],
                    411: ["length_required"],
                    413: ["payload_too_large"],
                },
                body={"required": True, "content": _json(_ref("WebhookSet"))},
            ),
            "delete": _operation(
                "webhook_delete",
                "webhooks",
                "No default webhook any more (the signing secret stays)",
                {"200": _answer("It", webhook)},
                codes={403: ["forbidden"]},
            ),
        },
    }


def _catalog_operation() -> dict:
    return {
        "operationId": "catalog_list",
        "tags": ["catalog"],
        "summary": "The offers and deals on sale, with their inputs and prices (no key)",
        "responses": {
            "200": _answer("The catalog", _ref("Catalog")),
            **_errors({503: ["unavailable"]}, client=False),
        },
        "security": [],
    }


def _events_operation(request_id: dict) -> dict:
    return _operation(
        "request_events",
        "requests",
        "A request's changes as Server-Sent Events",
        {
            "200": {
                "description": "One event per change until the request ends: `event: request` "
                "(data: the Request JSON, as `GET` answers it) for the request itself, `event: "
                "child` for a deal's item, an `id:` to resume from, and a comment every 15 s.",
                "content": {"text/event-stream": {"schema": _string()}},
            },
            "204": _answer("Resumed after the last event of a request that has ended"),
        },
        codes={404: ["not_found"]},
        parameters=(request_id, _ref("LastEventId", "parameters")),
    )


# --- the catalog's operations ---------------------------------------------------------------


def _credits(amount: int) -> str:
    return f"{amount} credit{'' if amount == 1 else 's'}"


def _intake_answers() -> dict:
    """The answers of an intake POST, in components.responses: `Live` (200), `Accepted`."""
    headers = {
        "Preference-Applied": _ref("PreferenceApplied", "headers"),
        "Idempotent-Replayed": _ref("IdempotentReplayed", "headers"),
    }
    links = {
        link: {"operationId": target, "parameters": {"request_id": "$response.body#/id"}}
        for link, target in (("get", "request_get"), ("cancel", "request_cancel"))
    }
    request = _ref("Request")
    return {
        "Live": _answer(
            "Your identical live request: nothing charged again",
            request,
            headers=headers,
            links=links,
        ),
        "Accepted": _answer(
            "Accepted: the price is held, the request queued", request, headers=headers, links=links
        ),
    }


INTAKE_ANSWERS = {"200": _ref("Live", "responses"), "202": _ref("Accepted", "responses")}
INTAKE_PARAMETERS = tuple(
    _ref(name, "parameters") for name in ("Webhook", "WebhookEvents", "Prefer")
)


def offer_operation(offer: dict) -> dict:
    label = f"{offer['service']}/{offer['action']}"
    inputs = offer["inputs"]
    expiry = (
        f" A request not started {offer['expiration']} s after intake ends `expired`; until "
        "then an identical POST answers `200` with the same request."
        if offer["expiration"]
        else ""
    )
    description = (
        f"**Price: {_credits(offer['price'])}** per request, held at intake and charged only "
        f"if it succeeds. Body: exactly its inputs ({_names(inputs)}). Results: "
        f"{offer['create_qty']} per request.{expiry}"
    )
    return _operation(
        "offer_" + _identifier(label),
        offer["service"],
        f"{offer['description'] or label} ({_credits(offer['price'])})",
        INTAKE_ANSWERS,
        codes=INTAKE_CODES,
        parameters=INTAKE_PARAMETERS,
        body={"required": bool(inputs), "content": _json(inputs_schema(inputs))},
        description=description,
        post=True,
    )


def deal_operation(deal: dict) -> dict:
    price = f"**Price: {_credits(deal['price'])}**"
    if deal["fixed_price"] is None and deal["price_modifier"]:
        price += f" (its offers' prices less {deal['price_modifier']}%)"
    if deal["addons"]:
        each = ", ".join(f"`{a['offer']}` {_credits(a['price'])}" for a in deal["addons"])
        off = f", {deal['addons_modifier']}% off included" if deal["addons_modifier"] else ""
        price += f", plus each add-on selected: {each}{off}"
    steps = "; ".join(
        f"`{item['offer']}`"
        + (f" on the output of the one before (`{item['pipeline']}`)" if item["pipeline"] else "")
        for item in deal["offers"]
    )
    return _operation(
        "deal_" + _identifier(deal["name"]),
        "deals",
        f"{deal['description'] or deal['name']} ({_credits(deal['price'])})",
        INTAKE_ANSWERS,
        codes=_merge(INTAKE_CODES, DEAL_CODES),
        parameters=INTAKE_PARAMETERS,
        body={"required": bool(deal["inputs"]), "content": _json(_deal_body(deal))},
        description=f"{price}, held at intake and charged only if every item succeeds. "
        f"Items: {steps}. Inputs: {_names(deal['inputs'])}, and those of the add-ons selected.",
        post=True,
    )


def _deal_body(deal: dict) -> dict:
    """`{"inputs", "addons"}`: the items' inputs always, an add-on's only with the add-on."""
    always = deal["inputs"]
    needed_by: dict[str, list[str]] = {}  # an add-on's own input → the add-ons that take it
    for addon in deal["addons"]:
        for name in addon["inputs"]:
            if name not in always:
                needed_by.setdefault(name, []).append(addon["offer"])
    names = [*always, *needed_by]
    addons = [addon["offer"] for addon in deal["addons"]]
    body = _object(
        {
            "inputs": inputs_schema(names, optional=tuple(needed_by)),
            "addons": {"type": "array", "items": {"enum": addons}, "uniqueItems": True}
            if addons
            else {"type": "array", "maxItems": 0},
        },
        optional=("addons",) + (() if always else ("inputs",)),
        additionalProperties=False,
    )
    groups: dict[tuple, list[str]] = {}
    for name, takers in needed_by.items():
        groups.setdefault(tuple(takers), []).append(name)
    if groups:
        body["allOf"] = [_with_addon(list(takers), found) for takers, found in groups.items()]
    return body


def _with_addon(addons: list[str], names: list[str]) -> dict:
    """`names` are required when one of `addons` is selected, refused otherwise."""
    return {
        "if": {"required": ["addons"], "properties": {"addons": {"contains": {"enum": addons}}}},
        "then": {"required": ["inputs"], "properties": {"inputs": {"required": names}}},
        "else": {"properties": {"inputs": {"not": {"anyOf": [{"required": [n]} for n in names]}}}},
    }


def _names(names: list[str]) -> str:
    return ", ".join(f"`{name}`" for name in names) or "none"


def _identifier(label: str) -> str:
    return re.sub(r"[^0-9A-Za-z]+", "_", label)


def catalog_paths() -> dict[str, dict]:
    paths, taken = {}, set()
    for offer in sorted(map(offer_repr, selectors.offer_list_active()), key=lambda o: o["url"]):
        paths[offer["url"]] = {"post": _unique(offer_operation(offer), taken)}
    for deal in sorted(map(deal_repr, selectors.deal_list_active()), key=lambda d: d["url"]):
        paths[deal["url"]] = {"post": _unique(deal_operation(deal), taken)}
    return paths


def _unique(operation: dict, taken: set) -> dict:
    """Slugs `a-b` and `a_b` give one identifier: the later one gets a suffix."""
    base, n = operation["operationId"], 1
    while operation["operationId"] in taken:
        n += 1
        operation["operationId"] = f"{base}_{n}"
    taken.add(operation["operationId"])
    return operation


# --- the hooks (SPECTACULAR_SETTINGS) -------------------------------------------------------

# The routes whose operations come from the catalog, in drf-spectacular's path syntax.
CATALOG_ROUTES = {("/svc/{}/{}/", "post"), ("/svc/deal/{}/", "post")}


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def leave_described_endpoints(endpoints, **kwargs):
    """PREPROCESSING_HOOKS: AutoSchema only for the routes this module does not describe."""
    described = CATALOG_ROUTES | {
        (_shape(path), method) for path, item in fixed_paths().items() for method in item
    }
    return [e for e in endpoints if (_shape(e[0]), e[2].lower()) not in described]


def describe_api(result, generator, request, public):
    """POSTPROCESSING_HOOKS: the fixed operations, then the catalog's, then what AutoSchema
    found (routes not described here); the components they refer to."""
    fixed = fixed_paths()
    catalog = catalog_paths()
    result["paths"] = {
        "/svc/": fixed.pop("/svc/"),
        **catalog,
        **fixed,
        **{path: item for path, item in result["paths"].items() if path not in catalog},
    }
    found = result.get("components", {})
    result["components"] = {**found, **components()}
    result["info"]["version"] = _package_version()
    result["info"]["x-catalog-version"] = catalog_version()
    result["tags"] = _tags(result["paths"])
    return result


def _package_version() -> str:
    try:
        return metadata.version("svc-marketplace")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0.0.0"


def _tags(paths: dict) -> list[dict]:
    described = {
        "catalog": "What is on sale (public)",
        "deals": "Several offers sold as one request",
        "requests": "Your requests: read, cancel, follow",
        "account": "Credits and transactions",
        "keys": "API keys (a key with `can_manage_keys`)",
        "webhooks": "Where requests' events are POSTed, signed",
    }
    names = []
    for item in paths.values():
        for operation in item.values():
            names += [tag for tag in operation.get("tags", ()) if tag not in names]
    return [
        {"name": name, "description": described.get(name, f"The offers of service `{name}`")}
        for name in names
    ]


# --- serving, cached per catalog version ----------------------------------------------------


def catalog_version() -> str:
    """A fingerprint of what the document shows of the catalog. Offers and deals: their count
    and latest `updated_at` (auto_now: every save; a delete lowers the count). A deal's offers
    and add-ons have no timestamp: their rows as they are (a deal has a few)."""
    parts = [
        model.objects.aggregate(n=Count("pk"), at=Max("updated_at"))
        for model in (ServiceOffer, ServiceDeal)
    ]
    parts += [
        list(
            ServiceDealItem.objects.order_by("pk").values_list(
                "pk", "deal", "offer", "position", "pipeline"
            )
        ),
        list(
            ServiceDealAddon.objects.order_by("pk").values_list("pk", "deal", "offer", "position")
        ),
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


class DocumentCache:
    """The document of one catalog version (the latest asked for), rendered per media type."""

    def __init__(self):
        self._lock = threading.Lock()
        self._version: str | None = None
        self._schema: dict | None = None
        self._bodies: dict[str, bytes] = {}

    def body(
        self,
        *,
        version: str,
        media_type: str,
        generate: Callable[[], dict],
        render: Callable[[dict], bytes],
    ) -> bytes:
        with self._lock:  # one generation at a time; a cached answer waits microseconds
            if self._version != version:
                self._schema, self._bodies = generate(), {}
                self._version = version
            if media_type not in self._bodies:
                self._bodies[media_type] = render(self._schema)
            return self._bodies[media_type]

    def forget(self) -> None:
        with self._lock:
            self._version, self._schema, self._bodies = None, None, {}


documents = DocumentCache()


class SchemaView(SpectacularAPIView):
    """`GET /api/schema/`: YAML (`application/vnd.oai.openapi`, the default) or JSON
    (`?format=json`, `Accept: application/json`); public, limited per IP like the catalog."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [AnonymousThrottle]

    def _get_schema_response(self, request):
        renderer = request.accepted_renderer
        body = documents.body(
            version=catalog_version(),
            media_type=renderer.media_type,
            generate=lambda: super(SchemaView, self)._get_schema_response(request).data,
            render=lambda schema: renderer.render(schema, renderer.media_type, {}),
        )
        charset = f"; charset={renderer.charset}" if renderer.charset else ""
        response = HttpResponse(body, content_type=renderer.media_type + charset)
        response["Content-Disposition"] = f'inline; filename="schema.{renderer.format}"'
        return response


class DocsView(SpectacularSwaggerSplitView):
    """`GET /api/docs/`: Swagger UI, its assets from this origin (drf-spectacular-sidecar)
    and its script a file of its own (`?script`), as the CSP requires."""

    url_name = "api-schema"
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [AnonymousThrottle]

    @classmethod
    def as_view(cls, **initkwargs):
        view = super().as_view(**initkwargs)
        style = inline_style_source(cls.template_name)
        return csp_update({"style-src": [style]})(view) if style else view


def inline_style_source(template_name: str) -> str | None:
    """The CSP source allowing the page's one inline `<style>` (drf-spectacular's template):
    its hash, so no other inline style runs."""
    found = re.search(r"<style>(.*?)</style>", get_template(template_name).template.source, re.S)
    if found is None:
        return None
    digest = base64.b64encode(hashlib.sha256(found.group(1).encode()).digest()).decode()
    return f"'sha256-{digest}'"

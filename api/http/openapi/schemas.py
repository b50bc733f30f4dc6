"""The document's shapes: the request, errors, keys, the account, the catalog, webhooks, and
an offer's inputs (api/http/openapi/__init__.py says how the document is made)."""

from django.conf import settings

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
    "too_many_streams": "SVC_LIVE_PER_CLIENT live answers already open on this server",
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
RETRY_AFTER_CODES = {"rate_limited", "idempotency_in_progress", "too_many_streams"}


# --- schemas -------------------------------------------------------------------------------


def ref(name: str, kind: str = "schemas") -> dict:
    return {"$ref": f"#/components/{kind}/{name}"}


def string(description: str = "", **more) -> dict:
    return {"type": "string", **({"description": description} if description else {}), **more}


def nullable(kind: str, **more) -> dict:
    return {"type": [kind, "null"], **more}


def object_schema(properties: dict, *, optional: tuple = (), **more) -> dict:
    required = [name for name in properties if name not in optional]
    return {"type": "object", "properties": properties, "required": required, **more}


TIME = string(format="date-time")
MAYBE_TIME = nullable("string", format="date-time")
INTEGER = {"type": "integer"}
COUNT = {"type": "integer", "minimum": 0}
STRINGS = {"type": "array", "items": {"type": "string"}}
# A stored input: what check_inputs (api/services/requests.py) lets in.
STORED_INPUT = {"type": ["string", "number", "boolean"]}

REQUEST = object_schema(
    {
        "id": string("sha256 of the caller, the offer or deal and the inputs (docs/api.md)"),
        "kind": {"enum": ["offer", "deal"]},
        "service": string("`deal` for a deal"),
        "action": string("the deal's name for a deal"),
        "status": {"enum": STATUSES},
        "inputs": {"type": "object", "additionalProperties": STORED_INPUT},
        "price": {**COUNT, "description": "credits held, charged on success (items: 0)"},
        "results": {
            "type": "array",
            "description": "`create_qty` results once succeeded; a deal's: one list per child",
        },
        "error": nullable(
            "object",
            required=["code", "message"],
            properties={"code": string(), "message": string()},
            description="why it failed, was canceled or expired (docs/api.md, codes)",
        ),
        "attempts": COUNT,
        "tries": {**COUNT, "description": "upstream tries of its handler calls"},
        "handler_used": nullable("string", description="set once succeeded"),
        "created_at": TIME,
        "started_at": MAYBE_TIME,
        "finished_at": MAYBE_TIME,
        "expires_at": MAYBE_TIME,
        "url": string(),
        "urls": object_schema({"get": string(), "cancel": string(), "events": string()}),
        "queue_position": nullable(
            "integer", minimum=0, description="while queued: jobs ahead of it in its queue"
        ),
        "children": {"type": "array", "items": ref("Request"), "description": "a deal's"},
        "parent": nullable("string", description="the deal of an item"),
        "cancel_requested": {"type": "boolean"},
        "addons": {**STRINGS, "description": "a deal: the selected add-ons"},
        "position": {**COUNT, "description": "an item: its place in the deal"},
        "pipeline": nullable("string", enum=PIPELINES),
        "addon": {"type": "boolean"},
        "parent_url": string(),
        "gateway": object_schema(
            {
                "model": string("the model it was called as"),
                "stream": {"type": "boolean"},
                "include_usage": {"type": "boolean"},
                "completion_id": string("the `id` of its completion and chunks"),
                "created": INTEGER,
                "held": {**COUNT, "description": "credits held at intake: the most it can cost"},
                "usage": nullable(
                    "object",
                    description="prompt_tokens, completion_tokens, total_tokens, and source: "
                    "upstream (its usage) or relayed (input counted, output chunks sent)",
                ),
                "charged": nullable("integer", minimum=0, description="credits captured"),
            },
            description="a call of the OpenAI-compatible gateway (/v1/chat/completions)",
        ),
    },
    optional=("addons", "position", "pipeline", "addon", "parent_url", "gateway"),
)
ERROR = object_schema(
    {
        "error": object_schema(
            {
                "code": string(),
                "message": string(),
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
    "budget": nullable("integer", minimum=1),
    "budget_period": {"enum": ["day", "week", "month"]},
    "rate_per_minute": nullable("integer", minimum=1),
    "max_in_flight": nullable("integer", minimum=1),
}
KEY_SCHEMA = object_schema(
    {
        "id": INTEGER,
        "name": string(),
        "display": string(examples=["svc_live_AbCd…wxyz"]),
        "environment": {"enum": ["live", "test"]},
        "state": {"enum": ["active", "revoked", "expired"]},
        "can_manage_keys": {"type": "boolean"},
        "created_at": TIME,
        "last_used_at": MAYBE_TIME,
        "expires_at": MAYBE_TIME,
        "revoked_at": MAYBE_TIME,
        "limits": object_schema(LIMITS),
        "usage": object_schema(
            {"period_start": TIME, "period_end": TIME, "spent": COUNT, "in_flight": COUNT}
        ),
    }
)
KEY_CREATE = object_schema(
    {
        # DRF's CharField: trimmed, then not blank, no NUL.
        "name": string(maxLength=100, pattern="^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$"),
        "can_manage_keys": {"type": "boolean", "default": False},
        "allowed": {
            "type": "array",
            "items": string(maxLength=120, pattern="^\\s*(\\*|[^/\\u0000]*/[^/\\u0000]*)\\s*$"),
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
ACCOUNT = object_schema(
    {
        "balance": COUNT,
        "held": COUNT,
        "transactions": {
            "type": "array",
            "description": "newest first, the last 100",
            "items": object_schema(
                {
                    "kind": {"enum": ["grant", "hold", "capture", "release"]},
                    "amount": INTEGER,
                    "request_id": nullable("string"),
                    "note": string(),
                    "created_at": TIME,
                }
            ),
        },
        "keys": {"type": "array", "items": ref("Key")},
    }
)
CATALOG_OFFER = object_schema(
    {
        "service": string(),
        "action": string(),
        "url": string(),
        "description": string(),
        "inputs": STRINGS,
        "price": COUNT,
        "create_qty": COUNT,
        "expiration": nullable("integer"),
    }
)
CATALOG_DEAL = object_schema(
    {
        "name": string(),
        "url": string(),
        "description": string(),
        "inputs": STRINGS,
        "price": {**COUNT, "description": "of the items, without add-ons"},
        "fixed_price": nullable("integer"),
        "price_modifier": COUNT,
        "offers": {
            "type": "array",
            "items": object_schema(
                {
                    "offer": string(),
                    "pipeline": nullable("string", enum=PIPELINES),
                    "price": COUNT,
                }
            ),
        },
        "addons": {
            "type": "array",
            "items": object_schema({"offer": string(), "inputs": STRINGS, "price": COUNT}),
        },
        "addons_modifier": COUNT,
    }
)
WEBHOOK = object_schema(
    {
        "url": nullable("string", format="uri", description="the account's default webhook"),
        "events": {"type": "array", "items": {"enum": EVENT_NAMES}},
        "has_secret": {"type": "boolean", "description": "a signing secret was given out"},
    }
)
WEBHOOK_SET = object_schema(
    {
        "url": string("https, public", format="uri", maxLength=2048),
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
WEBHOOK_SECRET = object_schema(
    {
        "secret": string("shown this once", pattern="^whsec_"),
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
        "allOf": [ref("Key"), object_schema({"key": string("the secret, shown this once")})]
    },
    "KeyCreate": KEY_CREATE,
    "Account": ACCOUNT,
    "Catalog": object_schema(
        {
            "offers": {"type": "array", "items": ref("CatalogOffer")},
            "deals": {"type": "array", "items": ref("CatalogDeal")},
        }
    ),
    "CatalogOffer": CATALOG_OFFER,
    "CatalogDeal": CATALOG_DEAL,
    "Webhook": WEBHOOK,
    "WebhookSet": WEBHOOK_SET,
    "WebhookSecret": WEBHOOK_SECRET,
    # The gateway (/v1/): OpenAI's shapes.
    "Model": object_schema(
        {
            "id": string("the offer's model_name"),
            "object": {"const": "model"},
            "created": INTEGER,
            "owned_by": string(),
        }
    ),
    "ModelList": object_schema(
        {"object": {"const": "list"}, "data": {"type": "array", "items": ref("Model")}}
    ),
    "ChatCompletionRequest": object_schema(
        {
            "model": string("a model of GET /v1/models"),
            "messages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["role"],
                    "properties": {
                        "role": string(),
                        "content": {"type": ["string", "array", "null"]},
                    },
                },
            },
            "stream": {"type": "boolean"},
            "stream_options": object_schema(
                {"include_usage": {"type": "boolean"}}, optional=("include_usage",)
            ),
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
            "n": {"type": "integer", "minimum": 1},
            "temperature": {"type": "number"},
            "tools": {"type": "array"},
        },
        optional=(
            "stream",
            "stream_options",
            "max_tokens",
            "max_completion_tokens",
            "n",
            "temperature",
            "tools",
        ),
        description="OpenAI's chat completion request; fields not listed pass through to the "
        "upstream as sent (docs/api.md, the gateway)",
    ),
    "ChatCompletion": object_schema(
        {
            "id": string(),
            "object": {"const": "chat.completion"},
            "created": INTEGER,
            "model": string(),
            "choices": {"type": "array"},
            "usage": {"type": "object"},
        },
        optional=("usage",),
    ),
    "OpenAIError": object_schema(
        {
            "error": object_schema(
                {
                    "message": string(),
                    "type": string("e.g. invalid_request_error, rate_limit_error"),
                    "param": {"type": ["string", "null"]},
                    "code": {"type": ["string", "null"]},
                }
            )
        }
    ),
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
    scalar = ref("Input")
    return object_schema(
        {name: scalar for name in names}, optional=optional, additionalProperties=False
    )

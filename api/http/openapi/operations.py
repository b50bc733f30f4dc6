"""The document's operations: parameters, headers and answers, the fixed endpoints, and one
operation per offer and deal on sale."""

import re

from django.conf import settings

from api import selectors
from api.http.openapi.schemas import (
    CODES,
    DEAL_CODES,
    IDEMPOTENCY_409,
    IDEMPOTENCY_CODES,
    INTAKE_CODES,
    INTEGER,
    KEY_REQUIRED,
    RETRY_AFTER_CODES,
    SCHEMAS,
    SHARED_ERRORS,
    input_schema,
    inputs_schema,
    object_schema,
    ref,
    string,
)
from api.http.representations import deal_repr, offer_repr
from infra.strict_json import INT64_MAX

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
            "RequestId": _path("request_id", string(minLength=1, maxLength=64)),
            "KeyId": _path("key_id", {"type": "integer", "minimum": 1, "maximum": INT64_MAX}),
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "description": "Send the POST again with the same key and get the first answer "
                "(status included, `Idempotent-Replayed: true`), nothing done twice; kept "
                f"{settings.SVC_IDEMPOTENCY_TTL} s, per client.",
                "schema": string(minLength=1, maxLength=255, pattern="^[\\x20-\\x7e]+$"),
            },
            "Prefer": {
                "name": "Prefer",
                "in": "header",
                "description": "`wait=N`: answer once the request has ended or after N seconds "
                f"(at most {wait}: more counts as {wait}; plain `wait`: {wait}), with "
                "`Preference-Applied`.",
                "schema": string(pattern="^wait(=[0-9]{1,9})?$"),
            },
            "Webhook": {
                "name": "webhook",
                "in": "query",
                "description": "Where to POST this request's events, signed (Standard "
                "Webhooks); https and public. Default: the account's webhook, if any.",
                "schema": string(format="uri", maxLength=2048),
            },
            "WebhookEvents": {
                "name": "webhook_events",
                "in": "query",
                "description": "Comma-separated: `start`, `completed` (default `completed`). "
                "Without `webhook`, for the account's webhook (none: `400 invalid_webhook`).",
                "schema": string(pattern="^(start|completed)(,(start|completed))*$"),
            },
            "LastEventId": {
                "name": "Last-Event-ID",
                "in": "header",
                "description": "Resume after this event (an EventSource sends it itself).",
                "schema": string(),
            },
        },
        "headers": {
            "PreferenceApplied": _header("`wait=N` when the answer waited", string()),
            "RetryAfter": _header("seconds to wait", INTEGER),
            "IdempotentReplayed": _header("`true` on a replayed answer", string()),
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
        "allOf": [ref("Error")],
        "properties": {"error": {"properties": {"code": {"enum": codes}}}},
    }
    answer = {"description": description, "content": _json(schema)}
    if RETRY_AFTER_CODES & set(codes):
        answer["headers"] = {"Retry-After": ref("RetryAfter", "headers")}
    return answer


_SHARED_BY_CODES = {
    (status, tuple(sorted(codes))): name for name, (status, codes) in SHARED_ERRORS.items()
}


def _error(status: int, codes: list[str]) -> dict:
    name = _SHARED_BY_CODES.get((status, tuple(sorted(codes))))
    return ref(name, "responses") if name else _error_answer(codes)


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
        parameters = (*parameters, ref("IdempotencyKey", "parameters"))
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
    request_id = ref("RequestId", "parameters")
    key_id = ref("KeyId", "parameters")
    request = ref("Request")
    webhook = _json(ref("Webhook"))
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
                {"200": _answer("The account", ref("Account"))},
            )
        },
        "/svc/account/keys/": {
            "get": _operation(
                "keys_list",
                "keys",
                "Your API keys",
                {
                    "200": _answer(
                        "The keys", object_schema({"keys": {"type": "array", "items": ref("Key")}})
                    )
                },
                codes={403: ["forbidden"]},
            ),
            "post": _operation(
                "key_create",
                "keys",
                "A new API key, its secret answered this once",
                {"201": _answer("Created", ref("KeyCreated"))},
                codes={
                    400: ["invalid_json", "invalid_inputs"],
                    403: ["forbidden"],
                    409: ["key_limit_reached"],
                    411: ["length_required"],
                    413: ["payload_too_large"],
                },
                body={"required": True, "content": _json(ref("KeyCreate"))},
                post=True,
            ),
        },
        "/svc/account/keys/{key_id}/": {
            method: _operation(
                operation_id,
                "keys",
                summary,
                {"200": _answer("The key", ref("Key"))},
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
                {"201": _answer("The new secret, shown this once", ref("WebhookSecret"))},
                codes={403: ["forbidden"]},
                post=True,
            )
        },
        **gateway_paths(),
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
                body={"required": True, "content": _json(ref("WebhookSet"))},
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


def gateway_paths() -> dict[str, dict]:
    """The OpenAI-compatible gateway's operations; errors in OpenAI's shape."""

    def errors(*statuses: int) -> dict:
        shaped = _answer("OpenAI's error shape", ref("OpenAIError"))
        return {str(status): shaped for status in statuses}

    def operation(operation_id: str, summary: str, answer: dict, *statuses, **more) -> dict:
        return {
            "operationId": operation_id,
            "tags": ["gateway"],
            "summary": summary,
            **more,
            "responses": {"200": answer, **errors(401, *statuses, 429, 503)},
            "security": KEY_REQUIRED,
        }

    model = {
        "name": "model",
        "in": "path",
        "required": True,
        "schema": string(minLength=1, maxLength=100),
    }
    chat = operation(
        "gateway_chat_completions",
        "A chat completion, streamed (stream: true) or whole, billed to the token",
        _answer(
            "The completion; streamed: `chat.completion.chunk` Server-Sent Events ending with "
            "`data: [DONE]` (with stream_options.include_usage, a last chunk with `usage` and "
            "`charged`). X-Request-Id names its request, X-Credits-Charged (whole) what it cost",
            None,
            content={
                "application/json": {"schema": ref("ChatCompletion")},
                "text/event-stream": {"schema": string()},
            },
        ),
        400,
        402,
        404,
        409,
        413,
        422,
        502,
        504,
        parameters=[ref("IdempotencyKey", "parameters")],
        requestBody={
            "required": True,
            "content": {"application/json": {"schema": ref("ChatCompletionRequest")}},
        },
    )
    chat["responses"]["202"] = _answer(
        "Served by a plain WSGI server (not the deployment's ASGI): the call's request, to "
        "follow at its URL",
        ref("Request"),
    )
    return {
        "/v1/chat/completions": {"post": chat},
        "/v1/models": {
            "get": operation(
                "gateway_models",
                "The models (offers with a model_name) your key may call",
                _answer("The models", ref("ModelList")),
            )
        },
        "/v1/models/{model}": {
            "get": operation(
                "gateway_model",
                "One model; 404 model_not_found for one your key may not call",
                _answer("The model", ref("Model")),
                404,
                parameters=[model],
            )
        },
    }


def _catalog_operation() -> dict:
    return {
        "operationId": "catalog_list",
        "tags": ["catalog"],
        "summary": "The offers and deals on sale, with their inputs and prices (no key)",
        "responses": {
            "200": _answer("The catalog", ref("Catalog")),
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
                "content": {"text/event-stream": {"schema": string()}},
            },
            "204": _answer("Resumed after the last event of a request that has ended"),
        },
        codes={404: ["not_found"], 429: ["too_many_streams"]},
        parameters=(request_id, ref("LastEventId", "parameters")),
    )


# --- the catalog's operations ---------------------------------------------------------------


def _credits(amount: int) -> str:
    return f"{amount} credit{'' if amount == 1 else 's'}"


def _intake_answers() -> dict:
    """The answers of an intake POST, in components.responses: `Live` (200), `Accepted`."""
    headers = {
        "Preference-Applied": ref("PreferenceApplied", "headers"),
        "Idempotent-Replayed": ref("IdempotentReplayed", "headers"),
    }
    links = {
        link: {"operationId": target, "parameters": {"request_id": "$response.body#/id"}}
        for link, target in (("get", "request_get"), ("cancel", "request_cancel"))
    }
    request = ref("Request")
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


INTAKE_ANSWERS = {"200": ref("Live", "responses"), "202": ref("Accepted", "responses")}
INTAKE_PARAMETERS = tuple(
    ref(name, "parameters") for name in ("Webhook", "WebhookEvents", "Prefer")
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
    body = object_schema(
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

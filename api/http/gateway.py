"""The OpenAI-compatible gateway (`/v1/`, issue 18): the models an operator exposes — an offer
with a `model_name` — to the keys allowed to call them, in OpenAI's shapes, so that any OpenAI
SDK lists and reads them.

    GET /v1/models            {"object": "list", "data": [{"id", "object": "model", …}]}
    GET /v1/models/<model>    one; a model the key may not call does not exist for it (404)

Errors are OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the status
codes its SDKs turn into their exceptions (401 AuthenticationError, 404 NotFoundError with
`model_not_found`, 429 RateLimitError with `Retry-After`, …).

    POST /v1/chat/completions  the intake of a chat call here (ChatCompletionsView); its
                               answer, streamed or whole, is api/http/chat.py's
"""

from rest_framework.response import Response

from api import selectors
from api.errors import ApplicationError
from api.http.body import max_body_bytes, read_json_object
from api.http.errors import exception_handler
from api.http.representations import request_repr
from api.http.throttling import IntakeThrottle, KeyIntakeThrottle
from api.http.views import ClientView
from api.models import ServiceOffer
from api.services.intake import intake_chat

OWNER = "svc-marketplace"
# Our error codes → OpenAI's error `type` (its SDKs read the status; clients read the type).
TYPES = {
    401: "invalid_request_error",
    402: "insufficient_quota",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
    502: "server_error",
    503: "server_error",
    504: "server_error",
}
# Our codes that OpenAI spells otherwise.
CODES = {"not_authenticated": "invalid_api_key", "rate_limited": "rate_limit_exceeded"}


def openai_exception_handler(exc, context):
    """The project's error answer (api/http/errors.py), reshaped as OpenAI's."""
    response = exception_handler(exc, context)
    if response is None:
        return None
    error = response.data.get("error", {})
    fields = error.get("fields")
    response.data = {
        "error": {
            "message": error.get("message", ""),
            "type": TYPES.get(response.status_code, "invalid_request_error"),
            "param": error.get("param") or (fields[0] if fields else None),
            "code": CODES.get(error.get("code"), error.get("code")),
        }
    }
    return response


class GatewayView(ClientView):
    def get_exception_handler(self):
        return openai_exception_handler


def model_repr(offer: ServiceOffer) -> dict:
    return {
        "id": offer.model_name,
        "object": "model",
        "created": int(offer.created_at.timestamp()),
        "owned_by": OWNER,
    }


class ModelListView(GatewayView):
    def get(self, request):
        models = selectors.model_list_for_key(key=request.auth)
        return Response({"object": "list", "data": [model_repr(o) for o in models]})


def model_for_key(model, key) -> ServiceOffer:
    offer = selectors.model_get_for_key(model=model, key=key) if isinstance(model, str) else None
    if offer is None:
        raise ApplicationError(
            "model_not_found",
            f"The model '{model}' does not exist or you do not have access to it.",
            status=404,
            param="model",
        )
    return offer


class ModelDetailView(GatewayView):
    def get(self, request, model: str):
        return Response(model_repr(model_for_key(model, request.auth)))


class ChatCompletionsView(GatewayView):
    """The intake of a chat call: 202 with its request (whose `gateway` says how to answer),
    which the ASGI application turns into OpenAI's answer (api/http/chat.py). Served by a
    plain WSGI server, the 202 is the answer: the request is followed at its URL."""

    throttle_classes = [IntakeThrottle, KeyIntakeThrottle]

    def post(self, request):
        body = read_json_object(request, limit=max_body_bytes())
        if not isinstance(body.get("model"), str):
            raise ApplicationError("invalid_request", "model is required", param="model")
        offer = model_for_key(body["model"], request.auth)
        svc_request = intake_chat(
            user_id=request.user.pk, offer=offer, body=body, api_key=request.auth
        )
        return Response(request_repr(svc_request), status=202)

"""HTTP views: each reads input, calls one service or selector, and shapes the output."""

import json
import logging

from django.db import connection
from django.http import HttpResponse, JsonResponse
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from api import health, selectors
from api.errors import ApplicationError
from api.http.body import max_body_bytes, read_json_object
from api.http.idempotency import IdempotentPostMixin
from api.http.inputs import KeyCreateInput
from api.http.representations import (
    account_repr,
    deal_repr,
    key_repr,
    offer_repr,
    request_repr,
)
from api.http.throttling import AnonymousThrottle, IntakeThrottle, KeyIntakeThrottle, ReadThrottle
from api.services.cancel import request_cancel_by_client
from api.services.deals import request_children
from api.services.intake import intake_submit, intake_submit_deal
from api.services.keys import (
    expiry_from_days,
    key_create_for_client,
    key_require_manager,
    key_revoke,
)
from infra import logs, metrics, stores
from webhooks.services import webhook_for_intake

logger = logging.getLogger(__name__)


class EventStreamRenderer(BaseRenderer):
    """`Accept: text/event-stream` (an EventSource's): errors still go out as JSON."""

    media_type = "text/event-stream"
    format = "sse"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return JSONRenderer().render(data)


class ClientView(IdempotentPostMixin, APIView):
    """A view of a client's own data: the caller's API key is required, its reads and cancels
    are limited per key, and no answer may be kept by a cache on the way."""

    throttle_classes = [ReadThrottle]

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        response["Cache-Control"] = "no-store"
        return response


class CatalogView(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []
    throttle_classes = [AnonymousThrottle]

    def get(self, request):
        return Response(
            {
                "offers": [offer_repr(o) for o in selectors.offer_list_active()],
                "deals": [deal_repr(d) for d in selectors.deal_list_active()],
            }
        )


class OfferIntakeView(ClientView):
    throttle_classes = [IntakeThrottle, KeyIntakeThrottle]

    def post(self, request, service: str, action: str):
        offer = selectors.offer_get_active(service=service, action=action)
        if offer is None:
            raise ApplicationError("not_found", f"no offer at /svc/{service}/{action}/", status=404)
        inputs = read_json_object(request, limit=max_body_bytes())
        svc_request, created = intake_submit(
            user_id=request.user.pk,
            offer=offer,
            inputs=inputs,
            api_key=request.auth,
            webhook=webhook_for_intake(user_id=request.user.pk, query=request.query_params),
        )
        return Response(request_repr(svc_request), status=202 if created else 200)


class DealIntakeView(ClientView):
    throttle_classes = [IntakeThrottle, KeyIntakeThrottle]

    def post(self, request, name: str):
        deal = selectors.deal_get_active(name=name)
        if deal is None:
            raise ApplicationError("not_found", f"no deal at /svc/deal/{name}/", status=404)
        body = read_json_object(request, limit=max_body_bytes())
        parent, children, created = intake_submit_deal(
            user_id=request.user.pk,
            deal=deal,
            body=body,
            api_key=request.auth,
            webhook=webhook_for_intake(user_id=request.user.pk, query=request.query_params),
        )
        return Response(request_repr(parent, children), status=202 if created else 200)


class RequestDetailView(ClientView):
    def get(self, request, request_id: str):
        svc_request = selectors.request_get_for_user(request_id=request_id, user_id=request.user.pk)
        if svc_request is None:
            raise ApplicationError("not_found", "no such request", status=404)
        return Response(selectors.request_representation(svc_request))


class RequestEventsView(ClientView):
    """`GET /svc/request/<id>/events/` where no ASGI server holds the stream open (the API
    under plain WSGI, Django's test client): the request's current state as one Server-Sent
    Event, after which the client's EventSource reconnects (`retry`) — a poll at the pace the
    `retry` field sets. The ASGI application (marketplace/asgi.py) answers this path itself
    with the live stream (api/http/live.py)."""

    renderer_classes = [EventStreamRenderer, JSONRenderer]

    def handle_exception(self, exc):
        # An error is JSON whatever the client accepts, and says so (schemathesis found it).
        self.request.accepted_renderer = JSONRenderer()
        self.request.accepted_media_type = JSONRenderer.media_type
        return super().handle_exception(exc)

    def get(self, request, request_id: str):
        svc_request = selectors.request_get_for_user(request_id=request_id, user_id=request.user.pk)
        if svc_request is None:
            raise ApplicationError("not_found", "no such request", status=404)
        body = selectors.request_representation(svc_request)
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
        response = HttpResponse(
            f"retry: 1000\nevent: request\ndata: {data}\n\n",
            content_type="text/event-stream; charset=utf-8",
        )
        return response


class RequestCancelView(ClientView):
    def post(self, request, request_id: str):
        svc_request = selectors.request_get_for_user(request_id=request_id, user_id=request.user.pk)
        if svc_request is None:
            raise ApplicationError("not_found", "no such request", status=404)
        logs.bind(request_id=svc_request.id, client=request.user.pk)
        if svc_request.parent:
            raise ApplicationError(
                "not_cancelable",
                "this request is an item of a deal; cancel the deal at "
                f"/svc/request/{svc_request.parent}/cancel/",
                status=409,
                parent=svc_request.parent,
            )
        svc_request, outcome = request_cancel_by_client(request=svc_request)
        if outcome == "terminal":
            raise ApplicationError(
                "not_cancelable",
                f"the request is {svc_request.status}; only queued or running ones can be canceled",
                status=409,
                status_now=svc_request.status,
            )
        return Response(
            request_repr(svc_request, request_children(svc_request)),
            status=200 if outcome == "canceled" else 202,
        )


class AccountView(ClientView):
    def get(self, request):
        return Response(account_repr(selectors.account_summary(user=request.user)))


class KeyListView(ClientView):
    """The client's keys (`GET`), and a new one (`POST`, answered with the key once). Only a
    key marked `can_manage_keys` may do either."""

    def get(self, request):
        key_require_manager(request.auth)
        return Response(
            {"keys": [key_repr(k) for k in selectors.key_list_for_user(user=request.user)]}
        )

    def post(self, request):
        key_require_manager(request.auth)
        given = KeyCreateInput(data=read_json_object(request, limit=max_body_bytes()))
        if not given.is_valid():
            raise ApplicationError(
                "invalid_inputs", _first_error(given.errors), fields=sorted(given.errors)
            )
        fields = dict(given.validated_data)
        days = fields.pop("expires_in_days", None)
        created = key_create_for_client(
            user=request.user, by=request.auth, expires_at=expiry_from_days(days), **fields
        )
        return Response(key_repr(created.key, secret=created.secret), status=201)


class KeyDetailView(ClientView):
    def get(self, request, key_id: int):
        key_require_manager(request.auth)
        return Response(key_repr(self._key(request, key_id)))

    def delete(self, request, key_id: int):
        key_require_manager(request.auth)
        key = self._key(request, key_id)
        key_revoke(key=key, by=f"key {request.auth.pk}")
        return Response(key_repr(key))

    @staticmethod
    def _key(request, key_id: int):
        key = selectors.key_get_for_user(key_id=key_id, user=request.user)
        if key is None:
            raise ApplicationError("not_found", "no such key", status=404)
        return key


def _first_error(errors: dict) -> str:
    name, problems = next(iter(errors.items()))
    return f"{name}: {problems[0] if isinstance(problems, list) else problems}"


def store_checks() -> dict:
    return {
        "sql": _check(lambda: connection.cursor().execute("SELECT 1")),
        "mongo": _check(stores.mongo_ping),
        "redis": _check(stores.redis_ping),
    }


def healthz(request):
    checks = store_checks()
    healthy = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if healthy else "unavailable", "checks": checks}
    # Opt-in: load balancers poll /healthz often, and the snapshot costs a few round trips. It
    # tells how busy the system is: only for callers that may read /metrics; the others get
    # the plain answer (a load balancer configured with ?detail=1 keeps working).
    if healthy and request.GET.get("detail") == "1" and metrics.metrics_allowed(request):
        body["detail"] = _health_detail()
    return JsonResponse(body, status=200 if healthy else 503)


def _health_detail() -> dict:
    try:
        return health.detail(health.snapshot())
    except Exception as exc:  # the stores answered the checks: a detail failure is not fatal
        logger.warning("healthz detail failed: %s", type(exc).__name__)
        return {"error": type(exc).__name__}


def _check(probe) -> str:
    try:
        probe()
    except Exception as exc:  # a health check reports, never raises
        return f"error: {type(exc).__name__}"
    return "ok"

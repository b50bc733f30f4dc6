"""HTTP views: each reads input, calls one service or selector, and shapes the output."""

import logging

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from api import health, selectors
from api.errors import ApplicationError
from api.http.body import read_json_object
from api.http.representations import account_repr, deal_repr, offer_repr, request_repr
from api.http.throttling import IntakeThrottle
from api.services.cancel import request_cancel_by_client
from api.services.deals import request_children
from api.services.intake import intake_submit, intake_submit_deal
from configs import live
from infra import logs, stores

logger = logging.getLogger(__name__)


def max_body_bytes() -> int:
    """The active `api` config's max_body_bytes, else SVC_MAX_BODY_BYTES."""
    return (live.config("api") or {}).get("max_body_bytes") or settings.SVC_MAX_BODY_BYTES


class CatalogView(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    def get(self, request):
        return Response(
            {
                "offers": [offer_repr(o) for o in selectors.offer_list_active()],
                "deals": [deal_repr(d) for d in selectors.deal_list_active()],
            }
        )


class OfferIntakeView(APIView):
    throttle_classes = [IntakeThrottle]

    def post(self, request, service: str, action: str):
        offer = selectors.offer_get_active(service=service, action=action)
        if offer is None:
            raise ApplicationError("not_found", f"no offer at /svc/{service}/{action}/", status=404)
        inputs = read_json_object(request, limit=max_body_bytes())
        svc_request, created = intake_submit(user_id=request.user.pk, offer=offer, inputs=inputs)
        return Response(request_repr(svc_request), status=202 if created else 200)


class DealIntakeView(APIView):
    throttle_classes = [IntakeThrottle]

    def post(self, request, name: str):
        deal = selectors.deal_get_active(name=name)
        if deal is None:
            raise ApplicationError("not_found", f"no deal at /svc/deal/{name}/", status=404)
        body = read_json_object(request, limit=max_body_bytes())
        parent, children, created = intake_submit_deal(
            user_id=request.user.pk, deal=deal, body=body
        )
        return Response(request_repr(parent, children), status=202 if created else 200)


class RequestDetailView(APIView):
    def get(self, request, request_id: str):
        svc_request = selectors.request_get_for_user(request_id=request_id, user_id=request.user.pk)
        if svc_request is None:
            raise ApplicationError("not_found", "no such request", status=404)
        return Response(request_repr(svc_request, request_children(svc_request)))


class RequestCancelView(APIView):
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


class AccountView(APIView):
    def get(self, request):
        return Response(account_repr(selectors.account_summary(user=request.user)))


def healthz(request):
    checks = {
        "sql": _check(lambda: connection.cursor().execute("SELECT 1")),
        "mongo": _check(stores.mongo_ping),
        "redis": _check(stores.redis_ping),
    }
    healthy = all(value == "ok" for value in checks.values())
    body = {"status": "ok" if healthy else "unavailable", "checks": checks}
    # Opt-in: load balancers poll /healthz often, and the snapshot costs a few round trips.
    if healthy and request.GET.get("detail") == "1":
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

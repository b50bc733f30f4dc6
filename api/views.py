"""HTTP views: each reads input, calls one service or selector, and shapes the output."""

import logging

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from api import mongo, selectors
from api.body import read_json_object
from api.documents import QUEUED
from api.errors import ApplicationError
from api.representations import offer_repr, request_repr
from api.services.requests import request_fail, request_submit
from api.throttling import IntakeThrottle
from executor.queues import enqueue_request, redis_connection

logger = logging.getLogger(__name__)


class CatalogView(APIView):
    permission_classes = [AllowAny]
    authentication_classes = []

    def get(self, request):
        return Response(
            {"offers": [offer_repr(o) for o in selectors.offer_list_active()], "deals": []}
        )


class OfferIntakeView(APIView):
    throttle_classes = [IntakeThrottle]

    def post(self, request, service: str, action: str):
        offer = selectors.offer_get_active(service=service, action=action)
        if offer is None:
            raise ApplicationError("not_found", f"no offer at /svc/{service}/{action}/", status=404)
        inputs = read_json_object(request, limit=settings.SVC_MAX_BODY_BYTES)
        svc_request, created = request_submit(
            user_id=request.user.pk, offer=offer, inputs=inputs, queue=settings.SVC_DEFAULT_QUEUE
        )
        if created:
            _enqueue_or_fail(svc_request.id, svc_request.queue)
            logger.info("request accepted id=%s offer=%s", svc_request.id, offer)
        return Response(request_repr(svc_request), status=202 if created else 200)


def _enqueue_or_fail(request_id: str, queue: str) -> None:
    try:
        enqueue_request(request_id=request_id, queue=queue)
    except Exception:
        logger.exception("enqueue failed id=%s", request_id)
        # Nothing was charged yet; end the request so a retry by the client starts afresh.
        request_fail(
            request_id=request_id,
            code="unavailable",
            message="the queue was unavailable",
            from_status=QUEUED,
        )
        raise ApplicationError("unavailable", "the queue is unavailable; retry shortly", status=503)


class RequestDetailView(APIView):
    def get(self, request, request_id: str):
        svc_request = selectors.request_get_for_user(request_id=request_id, user_id=request.user.pk)
        if svc_request is None:
            raise ApplicationError("not_found", "no such request", status=404)
        return Response(request_repr(svc_request))


def healthz(request):
    checks = {
        "sql": _check(lambda: connection.cursor().execute("SELECT 1")),
        "mongo": _check(mongo.ping),
        "redis": _check(redis_connection().ping),
    }
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status=200 if healthy else 503,
    )


def _check(probe) -> str:
    try:
        probe()
    except Exception as exc:  # a health check reports, never raises
        return f"error: {type(exc).__name__}"
    return "ok"

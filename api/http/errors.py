"""One translation to HTTP: every error leaves the API as {"error": {"code", "message", …}}."""

import logging

import pymongo.errors
import redis.exceptions
from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from rest_framework import exceptions
from rest_framework.response import Response

from api.errors import ApplicationError

logger = logging.getLogger(__name__)


def _drf_error(exc: exceptions.APIException) -> ApplicationError:
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        return ApplicationError("not_authenticated", message, status=401)
    if isinstance(exc, exceptions.Throttled):
        return ApplicationError(
            "rate_limited",
            "too many requests; retry later",
            status=429,
            retry_after=exc.wait and int(exc.wait + 0.999),
        )
    if isinstance(exc, exceptions.ParseError):
        return ApplicationError("invalid_json", message, status=400)
    if isinstance(exc, exceptions.NotFound):
        return ApplicationError("not_found", "not found", status=404)
    if isinstance(exc, exceptions.MethodNotAllowed):
        return ApplicationError("method_not_allowed", message, status=405)
    if isinstance(exc, exceptions.PermissionDenied):
        return ApplicationError("forbidden", message, status=403)
    if isinstance(exc, exceptions.UnsupportedMediaType):
        return ApplicationError("unsupported_media_type", message, status=415)
    return ApplicationError(exc.default_code or "error", message, status=exc.status_code)


def exception_handler(exc, context):
    """DRF's EXCEPTION_HANDLER: every error leaves the API in the same shape."""
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    if isinstance(exc, exceptions.APIException):
        exc = _drf_error(exc)
    elif isinstance(exc, (pymongo.errors.PyMongoError, redis.exceptions.RedisError)):
        logger.warning("store unavailable: %s", type(exc).__name__)
        exc = ApplicationError(
            "unavailable", "a backing store is unavailable; retry shortly", status=503
        )
    if not isinstance(exc, ApplicationError):
        return None  # a bug: Django's handler500 answers
    response = Response(exc.body(), status=exc.status)
    if exc.status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    if exc.extra.get("retry_after"):
        response["Retry-After"] = str(exc.extra["retry_after"])
    return response


def json_not_found(request, exception=None):
    if request.path.startswith("/v1/"):  # the gateway answers in OpenAI's shape everywhere
        error = {"message": "not found", "type": "invalid_request_error", "param": None}
        return JsonResponse({"error": {**error, "code": "not_found"}}, status=404)
    return JsonResponse({"error": {"code": "not_found", "message": "not found"}}, status=404)


def json_server_error(request):
    return JsonResponse(
        {"error": {"code": "internal_error", "message": "internal error; it has been logged"}},
        status=500,
    )


def json_bad_request(request, exception=None):
    return JsonResponse({"error": {"code": "bad_request", "message": "bad request"}}, status=400)

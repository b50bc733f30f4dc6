"""Reading a JSON object body with a size limit, whatever Content-Type the client sent."""

import json

from api.errors import ApplicationError


def read_json_object(request, *, limit: int) -> dict:
    raw_length = request.META.get("CONTENT_LENGTH") or "0"
    try:
        declared = int(raw_length)
    except ValueError:
        raise ApplicationError("invalid_json", "Content-Length is not a number")
    if declared > limit:
        raise _too_large(limit)
    body = request._request.read(limit + 1)
    if len(body) > limit:
        raise _too_large(limit)
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ApplicationError("invalid_json", f"body is not valid JSON: {exc}")
    if not isinstance(value, dict):
        raise ApplicationError("invalid_json", "body must be a JSON object of inputs")
    return value


def _too_large(limit: int) -> ApplicationError:
    return ApplicationError(
        "payload_too_large", f"body exceeds {limit} bytes", status=413, limit=limit
    )

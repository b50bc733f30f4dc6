"""Reading a JSON object body with a size limit, whatever Content-Type the client sent.

The body must be strict JSON (infra/strict_json.py: no NaN or infinities, valid Unicode,
at most SVC_MAX_JSON_DEPTH deep), else `400 invalid_json`: a value json.loads accepts but
the renderer or MongoDB refuses would be stored and charged, and answer 500 on every read.

A chunked body has no Content-Length, so Django reads it as empty. It is read from the WSGI
input when the server marks the input as terminated (`wsgi.input_terminated`: gunicorn
de-chunks it and ends it at the last chunk), else the client must send a length (411).
"""

from django.conf import settings

from api.errors import ApplicationError
from configs import live
from infra import strict_json


def max_body_bytes() -> int:
    """The active `api` config's max_body_bytes, else SVC_MAX_BODY_BYTES."""
    return (live.config("api") or {}).get("max_body_bytes") or settings.SVC_MAX_BODY_BYTES


def read_json_object(request, *, limit: int) -> dict:
    body = _read_body(request, limit)
    if not body.strip():
        return {}
    try:
        value = strict_json.loads(body, max_depth=settings.SVC_MAX_JSON_DEPTH)
    except strict_json.StrictJSONError as exc:
        raise ApplicationError("invalid_json", f"body is not valid JSON: {exc}")
    if not isinstance(value, dict):
        raise ApplicationError("invalid_json", "body must be a JSON object of inputs")
    return value


def _read_body(request, limit: int) -> bytes:
    meta = request.META
    raw_length = meta.get("CONTENT_LENGTH") or ""
    if not raw_length and meta.get("HTTP_TRANSFER_ENCODING"):
        if not meta.get("wsgi.input_terminated"):
            raise ApplicationError(
                "length_required",
                "send the body with a Content-Length (this server cannot read a chunked body)",
                status=411,
            )
        return _read_at_most(meta["wsgi.input"], limit)
    try:
        declared = int(raw_length or "0")
    except ValueError:
        raise ApplicationError("invalid_json", "Content-Length is not a number")
    if declared > limit:
        raise _too_large(limit)
    return _read_at_most(request._request, limit)


def _read_at_most(stream, limit: int) -> bytes:
    """The stream's bytes; 413 if there are more than `limit` (it reads one more, no further)."""
    chunks, size = [], 0
    while size <= limit:
        chunk = stream.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise _too_large(limit)
    return b"".join(chunks)


def _too_large(limit: int) -> ApplicationError:
    return ApplicationError(
        "payload_too_large", f"body exceeds {limit} bytes", status=413, limit=limit
    )

"""The request's representation (API.md, "Request representation"): what the API answers, and
what every event about a request carries (api/events.py), wherever the change was made."""

from datetime import datetime

from api.chat import completion_id
from api.documents import QUEUED, ServiceRequest


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_urls(request_id: str) -> dict:
    base = f"/svc/request/{request_id}/"
    return {"get": base, "cancel": f"{base}cancel/", "events": f"{base}events/"}


def request_repr(
    request: ServiceRequest,
    children: list[ServiceRequest] | None = None,
    *,
    queue_position: int | None = None,
) -> dict:
    """A request; a deal's `children` are given by the caller (they are documents of their own).

    `queue_position`: its place among its queue's waiting jobs (0: next), given by the caller
    for a queued request (it costs a look at the queue); null otherwise."""
    body = {
        "id": request.id,
        "kind": request.kind,
        "service": request.service,
        "action": request.action,
        "status": request.status,
        "inputs": request.inputs,
        "price": request.price,
        "results": list(request.results),
        "error": request.error or None,
        "attempts": request.attempts,
        "tries": request.tries or 0,
        "handler_used": request.handler_used if request.status == "succeeded" else None,
        "created_at": iso(request.created_at),
        "started_at": iso(request.started_at),
        "finished_at": iso(request.finished_at),
        "expires_at": iso(request.expires_at),
        "url": f"/svc/request/{request.id}/",
        "urls": request_urls(request.id),
        "queue_position": queue_position if request.status == QUEUED else None,
        "children": [request_repr(child) for child in children or ()],
        "parent": request.parent,
        "cancel_requested": bool(request.cancel_requested),
    }
    if request.meter:  # a gateway call (/v1/chat/completions, api/chat.py)
        meter = request.meter
        body["gateway"] = {
            "model": meter.get("model"),
            "stream": bool(request.stream),
            "include_usage": bool(meter.get("include_usage")),
            "completion_id": completion_id(request.id),
            "created": int(request.created_at.timestamp()),
            "held": meter.get("hold"),
            "usage": request.usage or None,
            "charged": request.charge,
        }
    if request.kind == "deal":
        body["addons"] = list(request.addons)
    if request.parent:
        body.update(
            position=request.position,
            pipeline=request.pipeline,
            addon=bool(request.addon),
            parent_url=f"/svc/request/{request.parent}/",
        )
    return body

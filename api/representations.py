"""Output shapes of the HTTP API (API.md, "Request representation")."""

from datetime import datetime

from api.documents import ServiceRequest
from api.models import LedgerEntry, ServiceOffer


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def request_repr(request: ServiceRequest) -> dict:
    return {
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
        "created_at": iso(request.created_at),
        "started_at": iso(request.started_at),
        "finished_at": iso(request.finished_at),
        "expires_at": iso(request.expires_at),
        "url": f"/svc/request/{request.id}/",
        "children": list(request.children),
        "cancel_requested": bool(request.cancel_requested),
    }


def offer_repr(offer: ServiceOffer) -> dict:
    return {
        "service": offer.service,
        "action": offer.action,
        "url": offer.endpoint,
        "description": offer.description,
        "inputs": offer.inputs,
        "price": offer.price,
        "create_qty": offer.create_qty,
        "expiration": offer.expiration,
    }


def account_repr(summary: dict) -> dict:
    return {
        "balance": summary["balance"],
        "held": summary["held"],
        "transactions": [
            {
                "kind": entry.kind,
                "amount": entry.amount,
                "request_id": None if entry.kind == LedgerEntry.GRANT else entry.request_id,
                "note": entry.note,
                "created_at": iso(entry.created_at),
            }
            for entry in summary["transactions"]
        ],
    }

"""Output shapes of the HTTP API (API.md, "Request representation")."""

from datetime import UTC, datetime

from api import deal_rules
from api.keys import ApiKey, period_end, period_start
from api.models import LedgerEntry, ServiceDeal, ServiceOffer
from api.prompt_templates import TemplateError
from api.shapes import iso, request_repr

__all__ = ["account_repr", "deal_repr", "iso", "key_repr", "offer_repr", "request_repr"]


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


def deal_repr(deal: ServiceDeal) -> dict:
    items, addons = deal.ordered_items(), deal.ordered_addons()
    try:
        inputs = deal_rules.deal_inputs([item.step() for item in items])
    except TemplateError:
        inputs = []
    return {
        "name": deal.name,
        "url": deal.endpoint,
        "description": deal.description,
        "inputs": inputs,
        "price": deal.price_for([item.offer for item in items], []),
        "fixed_price": deal.price,
        "price_modifier": deal.price_modifier,
        "offers": [
            {"offer": str(item.offer), "pipeline": item.pipeline or None, "price": item.offer.price}
            for item in items
        ],
        "addons": [
            {
                "offer": str(addon.offer),
                "inputs": deal_rules.step_inputs(addon.step()),
                "price": deal_rules.percent_off(addon.offer.price, deal.addons_modifier),
            }
            for addon in addons
            if addon.offer.is_active
        ],
        "addons_modifier": deal.addons_modifier,
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
        "keys": [key_repr(key) for key in summary["keys"]],
    }


def key_repr(key: ApiKey, *, secret: str | None = None) -> dict:
    """A key without its secret; `secret` only in the answer that creates it."""
    at = datetime.now(UTC)
    start = period_start(key.budget_period, at)
    body = {
        "id": key.pk,
        "name": key.name,
        "display": key.display,
        "environment": key.environment,
        "state": key.state(at),
        "can_manage_keys": key.can_manage_keys,
        "created_at": iso(key.created_at),
        "last_used_at": iso(key.last_used_at),
        "expires_at": iso(key.expires_at),
        "revoked_at": iso(key.revoked_at),
        "limits": {
            "allowed": list(key.allowed),
            "budget": key.budget,
            "budget_period": key.budget_period,
            "rate_per_minute": key.rate_per_minute,
            "max_in_flight": key.max_in_flight,
        },
        "usage": {
            "period_start": iso(start),
            "period_end": iso(period_end(key.budget_period, start)),
            "spent": key.spent_in_period(at),
            "in_flight": key.in_flight,
        },
    }
    if secret is not None:
        body["key"] = secret
    return body

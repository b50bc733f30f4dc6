"""Reads: the catalog and a client's requests."""

from api.documents import ServiceRequest
from api.models import Account, LedgerEntry, ServiceDeal, ServiceOffer

# Ledger entries GET /svc/account/ lists, newest first.
ACCOUNT_TRANSACTIONS = 100


def offer_get_active(*, service: str, action: str) -> ServiceOffer | None:
    return (
        ServiceOffer.objects.select_related("handler")
        .filter(service=service, action=action, is_active=True)
        .first()
    )


def offer_list_active() -> list[ServiceOffer]:
    return list(ServiceOffer.objects.select_related("handler").filter(is_active=True))


def deal_get_active(*, name: str) -> ServiceDeal | None:
    return ServiceDeal.objects.filter(name=name, is_active=True).first()


def deal_list_active() -> list[ServiceDeal]:
    """Active deals whose every offer is active (the others answer 404)."""
    deals = ServiceDeal.objects.filter(is_active=True).exclude(items__offer__is_active=False)
    return list(deals.filter(items__isnull=False).distinct())


def request_get_for_user(*, request_id: str, user_id: int) -> ServiceRequest | None:
    """The request if it belongs to the user; None otherwise, so others see a plain 404."""
    if not request_id or len(request_id) > 64:
        return None
    return ServiceRequest.objects(id=request_id, user_id=user_id).first()


def request_get(*, request_id: str) -> ServiceRequest | None:
    return ServiceRequest.objects(id=request_id).first()


def account_summary(*, user) -> dict:
    account = Account.objects.filter(user=user).first()
    entries = LedgerEntry.objects.filter(user=user)[:ACCOUNT_TRANSACTIONS]
    return {
        "balance": account.balance if account else 0,
        "held": account.held if account else 0,
        "transactions": list(entries),
    }

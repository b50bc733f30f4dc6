"""Reads: the catalog, a client's requests and account, and the work recon looks for.

What recon reads is always through an index led by status (named as a hint), so a sweep
costs what the stuck work costs, not what the history costs.
"""

from datetime import UTC, datetime

import redis
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncHour

from api import defaults
from api.documents import (
    QUEUED,
    RUNNING,
    STATUS_CREATED_INDEX,
    STATUS_EXPIRES_INDEX,
    SUCCEEDED,
    ServiceRequest,
)
from api.keys import ApiKey, pattern_allows
from api.models import Account, LedgerEntry, ServiceDeal, ServiceOffer, UsageRecord
from api.services.requests import request_children
from api.shapes import request_repr
from executor.queues import queue_position


def offer_get_active(*, service: str, action: str) -> ServiceOffer | None:
    return (
        ServiceOffer.objects.select_related("handler")
        .filter(service=service, action=action, is_active=True)
        .first()
    )


def offer_list_active() -> list[ServiceOffer]:
    return list(ServiceOffer.objects.select_related("handler").filter(is_active=True))


def model_list_for_key(*, key: ApiKey | None) -> list[ServiceOffer]:
    """The active offers exposed as models (`model_name`) that `key` may call, by name."""
    offers = ServiceOffer.objects.filter(is_active=True, model_name__isnull=False)
    return [
        offer
        for offer in offers.order_by("model_name")
        if key is None or pattern_allows(key.allowed, f"{offer.service}/{offer.action}")
    ]


def model_get_for_key(*, model: str, key: ApiKey | None) -> ServiceOffer | None:
    """The active offer exposed as `model`, if `key` may call it; None otherwise (a model a
    key may not use does not exist for it)."""
    offer = (
        ServiceOffer.objects.select_related("handler")
        .filter(is_active=True, model_name=model)
        .first()
    )
    if offer is None:
        return None
    if key is not None and not pattern_allows(key.allowed, f"{offer.service}/{offer.action}"):
        return None
    return offer


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


def request_representation(request: ServiceRequest) -> dict:
    """What `GET /svc/request/<id>/` answers for the request (and every live answer sends):
    a deal with its items, a queued request with its place in its queue."""
    position = None
    if request.status == QUEUED and request.queue and not request.awaits_previous:
        try:
            position = queue_position(queue=request.queue, job_id=request.id)
        except redis.RedisError:  # the position is a hint; the request is in MongoDB
            position = None
    return request_repr(request, request_children(request), queue_position=position)


def request_get(*, request_id: str) -> ServiceRequest | None:
    return ServiceRequest.objects(id=request_id).first()


def account_summary(*, user) -> dict:
    account = Account.objects.filter(user=user).first()
    entries = LedgerEntry.objects.filter(user=user)[: defaults.ACCOUNT_TRANSACTIONS]
    return {
        "balance": account.balance if account else 0,
        "held": account.held if account else 0,
        "transactions": list(entries),
        "keys": key_list_for_user(user=user),
    }


def key_list_for_user(*, user) -> list[ApiKey]:
    return list(ApiKey.objects.filter(user=user))


def key_list(*, user=None) -> list[ApiKey]:
    """Every key (with its user), or one client's."""
    keys = ApiKey.objects.select_related("user")
    return list(keys.filter(user=user) if user is not None else keys)


def key_get_for_user(*, key_id: int, user) -> ApiKey | None:
    return ApiKey.objects.filter(pk=key_id, user=user).first()


# --- what recon looks for -------------------------------------------------------------------


def requests_running_since_before(at: datetime, *, limit: int):
    """Offer requests that started running before `at` (their executor may have died)."""
    return (
        ServiceRequest.objects(status=RUNNING, kind="offer", started_at__lt=at)
        .only("id", "worker", "started_at", "attempts", "queue", "parent", "meter", "stream")
        .hint(STATUS_CREATED_INDEX)
        .limit(limit)
    )


def requests_queued_since_before(at: datetime, *, limit: int):
    """Requests queued since before `at`, oldest first."""
    return (
        ServiceRequest.objects(status=QUEUED, created_at__lt=at)
        .hint(STATUS_CREATED_INDEX)
        .order_by("status", "created_at")
        .limit(limit)
    )


def requests_succeeded_expired(at: datetime, *, limit: int):
    """Top-level requests that succeeded and whose results expired before `at`."""
    return (
        ServiceRequest.objects(status=SUCCEEDED, expires_at__lt=at, parent=None)
        .only("id")
        .hint(STATUS_EXPIRES_INDEX)
        .order_by("status", "expires_at")
        .limit(limit)
    )


def request_ids_running(ids: list[str]) -> list[str]:
    """Those of `ids` whose request still says running."""
    return [doc.id for doc in ServiceRequest.objects(id__in=ids, status=RUNNING).only("id")]


def deal_item_before(step: ServiceRequest) -> ServiceRequest | None:
    """The deal item a pipeline step follows (None for the first item, or a missing one)."""
    parent = ServiceRequest.objects(id=step.parent).only("children").first()
    if parent is None or not step.position:
        return None
    return ServiceRequest.objects(id=parent.children[step.position - 1]).first()


def deal_children_exist(parent: ServiceRequest) -> bool:
    """Whether every child the deal lists was inserted (its intake did not stop half-way)."""
    return ServiceRequest.objects(id__in=list(parent.children)).count() == len(parent.children)


def holds_unsettled_before(at: datetime, *, limit: int) -> list[str]:
    """Request ids of holds made before `at` that no capture or release settled yet."""
    settled = LedgerEntry.objects.filter(settles__isnull=False).values("settles")
    return list(
        LedgerEntry.objects.filter(kind=LedgerEntry.HOLD, created_at__lt=at)
        .exclude(request_id__in=settled)
        .values_list("request_id", flat=True)[:limit]
    )


def usage_by_hour(*, start: datetime, end: datetime) -> list[dict]:
    """Usage records made in [start, end), summed per UTC hour, handler, resource and client:
    requests, calls, credits, price, succeeded, failed (recon's hourly aggregates)."""
    rows = (
        UsageRecord.objects.filter(created_at__gte=start, created_at__lt=end)
        .annotate(hour=TruncHour("created_at", tzinfo=UTC))
        .order_by()
        .values("hour", "handler", "resource", "user_id", "user__username")
        .annotate(
            requests=Count("id"),
            calls=Sum("calls"),
            credits=Sum("credits"),
            price=Sum("price"),
            succeeded=Count("id", filter=Q(status="succeeded")),
            failed=Count("id", filter=Q(status="failed")),
        )
    )
    return list(rows)

"""Credit movements. Each is one SQL transaction: the account row and its ledger entry change
together, and the ledger's unique keys make every movement idempotent:

- a hold is unique per request (`request_id`, "hold");
- a request is settled (captured or released) exactly once (`settles` is unique).

The balance check is a conditional UPDATE (`balance >= price`), so concurrent intakes can
never take an account below zero, on SQLite (IMMEDIATE transactions) as on PostgreSQL.
"""

import uuid

from django.db import IntegrityError, transaction
from django.db.models import F

from api.errors import ApplicationError
from api.models import Account, LedgerEntry, UsageRecord


def account_open(*, user) -> Account:
    """The client's account, created with a zero balance if it has none yet."""
    account, _ = Account.objects.get_or_create(user=user)
    return account


def account_grant(*, user, amount: int, note: str = "", key: str | None = None) -> LedgerEntry:
    """Add credits. `key` makes a grant idempotent (the same key grants once)."""
    if amount <= 0:
        raise ValueError("a grant must be a positive number of credits")
    with transaction.atomic():
        Account.objects.get_or_create(user=user)
        entry, created = LedgerEntry.objects.get_or_create(
            request_id=key or f"grant:{uuid.uuid4()}",
            kind=LedgerEntry.GRANT,
            defaults={"user": user, "amount": amount, "note": note},
        )
        if created:
            Account.objects.filter(user=user).update(balance=F("balance") + amount)
    return entry


def account_hold(*, user_id: int, request_id: str, amount: int) -> bool:
    """Reserve `amount` for a request; False if it was already held. 402 if the balance is short."""
    try:
        with transaction.atomic():
            taken = Account.objects.filter(user_id=user_id, balance__gte=amount).update(
                balance=F("balance") - amount, held=F("held") + amount
            )
            if not taken:
                raise _insufficient(user_id, amount)
            LedgerEntry.objects.create(
                user_id=user_id, kind=LedgerEntry.HOLD, amount=amount, request_id=request_id
            )
    except IntegrityError:
        return False  # held before (the whole transaction, balance change included, rolled back)
    return True


def _insufficient(user_id: int, amount: int) -> ApplicationError:
    balance = Account.objects.filter(user_id=user_id).values_list("balance", flat=True).first()
    return ApplicationError(
        "insufficient_credits",
        f"this request costs {amount} credits and the balance is {balance or 0}",
        status=402,
        balance=balance or 0,
        price=amount,
    )


def account_capture(*, request_id: str, note: str = "") -> bool:
    """Charge a request's hold (it succeeded). False if there was no hold or it was settled."""
    return _settle(request_id, LedgerEntry.CAPTURE, note)


def account_release(*, request_id: str, note: str = "") -> bool:
    """Return a request's hold to the balance. False if there was no hold or it was settled."""
    return _settle(request_id, LedgerEntry.RELEASE, note)


def _settle(request_id: str, kind: str, note: str) -> bool:
    hold = LedgerEntry.objects.filter(request_id=request_id, kind=LedgerEntry.HOLD).first()
    if hold is None:
        return False
    try:
        with transaction.atomic():
            LedgerEntry.objects.create(
                user_id=hold.user_id,
                kind=kind,
                amount=hold.amount,
                request_id=request_id,
                settles=request_id,
                note=note,
            )
            changes = {"held": F("held") - hold.amount}
            if kind == LedgerEntry.RELEASE:
                changes["balance"] = F("balance") + hold.amount
            Account.objects.filter(user_id=hold.user_id).update(**changes)
    except IntegrityError:
        return False  # settled before
    return True


def usage_record(
    *, request, calls: int, credits: int, handler: str = "", resource: str = ""
) -> None:
    """Record what an executed request cost; once per request (one INSERT … ON CONFLICT DO
    NOTHING on the unique request id, so a repeated call changes nothing). `handler` and
    `resource` name what made the calls when it was not the offer's own (a fallback)."""
    captured = request.status == "succeeded"
    record = UsageRecord(
        request_id=request.id,
        user_id=request.user_id,
        service=request.service,
        action=request.action,
        handler=handler or request.handler or "",
        resource=resource or request.resource or "",
        status=request.status,
        calls=calls,
        credits=credits,
        price=request.price if captured else 0,
    )
    UsageRecord.objects.bulk_create([record], ignore_conflicts=True)

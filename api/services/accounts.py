"""Credit movements. Each is one SQL transaction: the account row and its ledger entry change
together, and the ledger's unique keys make every movement idempotent:

- a hold is unique per request (`request_id`, "hold");
- a request is settled (captured or released) exactly once (`settles` is unique).

The balance check is a conditional UPDATE (`balance >= price`), so concurrent intakes can
never take an account below zero, on SQLite (IMMEDIATE transactions) as on PostgreSQL.
"""

import uuid

from django.db import IntegrityError, transaction
from django.db.models import Case, F, Q, Value, When
from django.utils import timezone

from api import defaults
from api.errors import ApplicationError
from api.keys import ApiKey, period_start
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


def account_hold(
    *, user_id: int, request_id: str, amount: int, api_key: ApiKey | None = None
) -> bool:
    """Reserve `amount` for a request; False if it was already held. 402 if the balance is
    short; with `api_key`, 402 `key_budget_exceeded` if the key's budget for the period is,
    and 429 if the key has `max_in_flight` requests in flight already."""
    try:
        with transaction.atomic():
            # The account row first, then the key's: settlement locks them in the same order
            # (PostgreSQL would otherwise deadlock a hold against a settlement).
            taken = Account.objects.filter(user_id=user_id, balance__gte=amount).update(
                balance=F("balance") - amount, held=F("held") + amount
            )
            if not taken:
                raise _insufficient(user_id, amount)
            if api_key is not None:
                _key_take(api_key, amount)
            LedgerEntry.objects.create(
                user_id=user_id,
                kind=LedgerEntry.HOLD,
                amount=amount,
                request_id=request_id,
                api_key=api_key,
            )
    except IntegrityError:
        return False  # held before (the whole transaction, balance change included, rolled back)
    return True


def _key_take(key: ApiKey, amount: int) -> None:
    """Count one more request in flight and `amount` more spent in the key's current period,
    if both stay within its limits: one conditional UPDATE, exact under concurrency."""
    current = period_start(key.budget_period, timezone.now())
    if key.budget is None and key.max_in_flight is None and key.period_start == current:
        # Nothing to check and the same period as when the key was read (both rechecked in
        # the WHERE): a plain increment, a millisecond of SQL compilation cheaper.
        plain = ApiKey.objects.filter(
            pk=key.pk, period_start=current, budget=None, max_in_flight=None
        )
        if plain.update(in_flight=F("in_flight") + 1, period_spent=F("period_spent") + amount):
            return
    in_period = Q(period_start=current)
    fits = Q(budget=None) | (in_period & Q(period_spent__lte=F("budget") - amount))
    fits |= ~in_period & Q(budget__gte=amount)
    room = Q(max_in_flight=None) | Q(in_flight__lt=F("max_in_flight"))
    taken = ApiKey.objects.filter(fits & room, pk=key.pk).update(
        in_flight=F("in_flight") + 1,
        period_spent=Case(When(in_period, then=F("period_spent") + amount), default=Value(amount)),
        period_start=current,
    )
    if taken:
        return
    key.refresh_from_db(fields=["in_flight", "period_spent", "period_start"])
    if key.max_in_flight is not None and key.in_flight >= key.max_in_flight:
        raise ApplicationError(
            "rate_limited",
            f"this API key has {key.in_flight} requests in flight, its limit",
            status=429,
            retry_after=defaults.IN_FLIGHT_RETRY_AFTER,
        )
    spent = key.spent_in_period(timezone.now())
    raise ApplicationError(
        "key_budget_exceeded",
        f"this request costs {amount} credits and the API key has {key.budget - spent} of its "
        f"{key.budget} left this {key.budget_period}",
        status=402,
        budget=key.budget,
        spent=spent,
        price=amount,
    )


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


def account_settle_metered(*, request_id: str, charge: int, note: str = "") -> bool:
    """Charge `charge` of a request's hold (a metered call: what it used) and return the rest,
    in one transaction: a capture of `charge` (settling the request) and a release of the rest
    (its own `settles` key, `<request id>:rest`). At most the hold is captured. False if there
    was no hold or it was settled."""
    hold = LedgerEntry.objects.filter(request_id=request_id, kind=LedgerEntry.HOLD).first()
    if hold is None:
        return False
    charge = max(0, min(charge, hold.amount))
    if charge == hold.amount:
        return _settle(request_id, LedgerEntry.CAPTURE, note)
    if charge == 0:
        return _settle(request_id, LedgerEntry.RELEASE, note)
    rest = hold.amount - charge
    try:
        with transaction.atomic():
            LedgerEntry.objects.bulk_create(
                [
                    LedgerEntry(
                        user_id=hold.user_id,
                        kind=LedgerEntry.CAPTURE,
                        amount=charge,
                        request_id=request_id,
                        settles=request_id,
                        note=note,
                    ),
                    LedgerEntry(
                        user_id=hold.user_id,
                        kind=LedgerEntry.RELEASE,
                        amount=rest,
                        request_id=request_id,
                        settles=f"{request_id}{REST}",
                        note="the hold's unused rest",
                    ),
                ]
            )
            Account.objects.filter(user_id=hold.user_id).update(
                held=F("held") - hold.amount, balance=F("balance") + rest
            )
            if hold.api_key_id is not None:
                _key_settle(hold, refund=rest)
    except IntegrityError:
        return False  # settled before
    return True


# The `settles` suffix of the release that returns a partly captured hold's rest.
REST = ":rest"


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
            if hold.api_key_id is not None:
                _key_settle(hold, refund=hold.amount if kind == LedgerEntry.RELEASE else 0)
    except IntegrityError:
        return False  # settled before
    return True


def _key_settle(hold: LedgerEntry, *, refund: int) -> None:
    """The hold's key has one request fewer in flight; what is released (`refund` credits)
    goes back to the key's budget if the period it was held in is still the key's current one."""
    keys = ApiKey.objects.filter(pk=hold.api_key_id)
    keys.filter(in_flight__gt=0).update(in_flight=F("in_flight") - 1)
    if refund:
        period = keys.values_list("budget_period", flat=True).first()
        if period is not None:
            keys.filter(
                period_start=period_start(period, hold.created_at),
                period_spent__gte=refund,
            ).update(period_spent=F("period_spent") - refund)


def usage_record(
    *, request, calls: int, credits: int, handler: str = "", resource: str = ""
) -> None:
    """Record what an executed request cost; once per request (one INSERT … ON CONFLICT DO
    NOTHING on the unique request id, so a repeated call changes nothing). `handler` and
    `resource` name what made the calls when it was not the offer's own (a fallback)."""
    captured = request.status == "succeeded"
    charged = request.price if captured else 0
    if getattr(request, "meter", None):  # a metered call: what it was charged
        charged = request.charge or 0
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
        price=charged,
    )
    UsageRecord.objects.bulk_create([record], ignore_conflicts=True)


def account_hold_exists(*, request_id: str) -> bool:
    """Whether the request's hold is in the ledger: its intake committed it (one read of the
    unique (request_id, kind) index)."""
    return LedgerEntry.objects.filter(request_id=request_id, kind=LedgerEntry.HOLD).exists()

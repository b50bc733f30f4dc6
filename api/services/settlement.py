"""Settlement: what a request that ended costs its client, and the records that say so. The one
place a request is charged: the executor, recon and the API's cancel all call it.

    request_settle(request=ended, usage=Usage(calls, credits, handler, resource))

- an offer request: its hold is captured when it succeeded (the whole price), released
  otherwise; a metered call (the gateway's, api/chat.py) captures what it used (`charge`)
  and releases the rest;
- a deal's item: its deal moves on (api/services/deals.py); once the deal has ended, the
  deal is settled the same way (the deal holds the price, charged only if every item
  succeeded);
- `usage`: the handler calls the request made, recorded once (a deal gets its own record,
  without calls, when it is charged).

Every movement is keyed by the request id (accounts: a hold settles once, a usage record is
unique per request), so settling again — a repeated job, recon racing an executor, a crash
and a retry — changes nothing.
"""

import logging
from dataclasses import dataclass

from django.db import transaction

from api.documents import SUCCEEDED, TERMINAL, ServiceRequest
from api.models import LedgerEntry
from api.services import deals
from api.services.accounts import (
    account_capture,
    account_release,
    account_settle_metered,
    usage_record,
)
from api.shapes import iso, request_repr
from webhooks.services import webhook_notify

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Usage:
    """What an executed request's handler calls spent, on what served them."""

    calls: int
    credits: int  # integration credits (handler credits × calls)
    handler: str = ""  # a fallback's id when it served the request; else the offer's handler
    resource: str = ""


def request_settle(*, request: ServiceRequest, usage: Usage | None = None) -> None:
    """Settle a request that reached a terminal status (others are left alone)."""
    if request.status not in TERMINAL:
        return
    if request.parent:
        ended = deals.deal_child_ended(request)  # may queue the next pipeline step
        if ended is not None and ended.status in TERMINAL:
            with transaction.atomic():
                _settle_own(ended)
        if usage is not None:
            _usage_record(request, usage)
        return
    with transaction.atomic():  # the charge and its usage record: one commit, not two
        _settle_own(request)
        if usage is not None:
            _usage_record(request, usage)


def _usage_record(request: ServiceRequest, usage: Usage) -> None:
    usage_record(
        request=request,
        calls=usage.calls,
        credits=usage.credits,
        handler=usage.handler,
        resource=usage.resource,
    )


def _settle_own(request: ServiceRequest) -> None:
    """Capture or release the request's own hold (an offer request, or a deal), and tell the
    client's webhook, in the same transaction: the notice is kept exactly when the charge is.
    A metered call (the gateway's) captures the `charge` its executor recorded — what it used
    — and releases the rest; one that ended without it (lost, canceled in the queue) is not
    charged."""
    if request.meter:
        account_settle_metered(
            request_id=request.id, charge=request.charge or 0, note=f"metered {request.status}"
        )
    elif request.status == SUCCEEDED:
        account_capture(request_id=request.id)
        if request.kind == "deal":  # the deal's own record; its items have theirs
            usage_record(request=request, calls=0, credits=0)
    else:
        note = f"deal {request.status}" if request.kind == "deal" else request.status
        account_release(request_id=request.id, note=note)
    if request.webhook:
        _notify_completed(request)


def _notify_completed(request: ServiceRequest) -> None:
    """The `completed` webhook: the request as its GET shows it, what was charged, and the
    ledger entry that settled its hold (none: nothing was held, e.g. an ended deal item's)."""
    entry = LedgerEntry.objects.filter(settles=request.id).first()
    charged = entry.amount if entry is not None and entry.kind == LedgerEntry.CAPTURE else 0
    webhook_notify(
        user_id=request.user_id,
        request_id=request.id,
        webhook=request.webhook,
        event="completed",
        body={
            **request_repr(request, deals.request_children(request)),
            "charged": charged,
            "ledger_entry": None
            if entry is None
            else {
                "kind": entry.kind,
                "amount": entry.amount,
                "request_id": entry.request_id,
                "note": entry.note,
                "created_at": iso(entry.created_at),
            },
        },
    )


def hold_settle_orphaned(*, request_id: str) -> bool:
    """Release a hold whose request document is gone (an intake that crashed after the hold
    and before its document was kept). True if it released something."""
    released = account_release(request_id=request_id, note="recon: the request is gone")
    if released:
        logger.info("hold released, its request is gone id=%s", request_id)
    return released

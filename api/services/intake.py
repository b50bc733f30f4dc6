"""Intake: a client's POST becomes a held, stored and queued request, or changes nothing.

Order matters for "nothing lost, nothing double-charged", for offers and deals alike:
1. the request document is inserted (its unique id settles identical concurrent POSTs);
2. the price is held (a conditional UPDATE: 402 and the document is discarded if short);
3. the work is started: the job enqueued (a deal: its items inserted, the ready ones
   enqueued); on failure the request ends `failed` and settling it releases the hold.
A crash between steps leaves a queued document that recon finds and converges.

An identical POST that loses the insert answers with the winner's request only once the
winner committed it (step 2 done: its hold is in the ledger); if the winner discards it
instead, the POST inserts again and gets its own answer (a 402 on the same empty balance).
"""

import logging
import time
from collections.abc import Callable

from api import defaults
from api.chat import chat_call
from api.documents import QUEUED, ServiceRequest
from api.errors import ApplicationError
from api.keys import ApiKey
from api.models import ServiceDeal, ServiceOffer
from api.services import deals
from api.services.accounts import account_hold, account_hold_exists
from api.services.keys import key_check_allowed
from api.services.requests import (
    request_discard,
    request_exists,
    request_fail,
    request_submit,
    request_submit_chat,
)
from api.services.settlement import request_settle
from executor.queues import enqueue_request, route_for_handler
from infra import logs

logger = logging.getLogger(__name__)


def intake_submit(
    *,
    user_id: int,
    offer: ServiceOffer,
    inputs: dict,
    api_key: ApiKey | None = None,
    webhook: dict | None = None,
) -> tuple[ServiceRequest, bool]:
    """Returns (request, created); created is False for a live identical request (no charge).
    `api_key`: the key the client called with; its limits apply (api/keys.py). `webhook`:
    {"url", "events"} (webhooks.services.webhook_for_intake) or None."""
    key_check_allowed(key=api_key, target=f"{offer.service}/{offer.action}")
    if offer.metered:
        raise ApplicationError(
            "metered_offer",
            "this offer is billed per token: call it at POST /v1/chat/completions with "
            f"model {offer.model_name!r}",
            status=400,
        )
    resource, queue = route_for_handler(offer.handler_id)
    request, created = _insert_or_committed(
        lambda: request_submit(
            user_id=user_id,
            offer=offer,
            inputs=inputs,
            queue=queue,
            resource=resource,
            webhook=webhook,
        )
    )
    # The rest of this HTTP request's records carry the request's story (infra/logs.py).
    logs.bind(request_id=request.id, client=user_id, offer=f"{offer.service}/{offer.action}")
    if not created:
        return request, False
    _accept(
        request,
        amount=offer.price,
        api_key=api_key,
        start=lambda: enqueue_request(request_id=request.id, queue=request.queue),
        fail=lambda: request_fail(
            request_id=request.id,
            code="unavailable",
            message="the queue was unavailable",
            from_status=QUEUED,
        ),
    )
    logger.info("request accepted id=%s offer=%s price=%s", request.id, offer, offer.price)
    return request, True


def intake_chat(
    *, user_id: int, offer: ServiceOffer, body: dict, api_key: ApiKey | None = None
) -> ServiceRequest:
    """A gateway call (`POST /v1/chat/completions`): checked and capped (api/chat.py), stored,
    held at the most it can cost (402 if the balance or the key's budget is short), queued."""
    key_check_allowed(key=api_key, target=f"{offer.service}/{offer.action}")
    call = chat_call(offer=offer, body=body)
    resource, queue = route_for_handler(offer.handler_id)
    request = request_submit_chat(
        user_id=user_id, offer=offer, call=call, queue=queue, resource=resource
    )
    logs.bind(request_id=request.id, client=user_id, offer=f"{offer.service}/{offer.action}")
    _accept(
        request,
        amount=call.hold,
        api_key=api_key,
        start=lambda: enqueue_request(request_id=request.id, queue=request.queue),
        fail=lambda: request_fail(
            request_id=request.id,
            code="unavailable",
            message="the queue was unavailable",
            from_status=QUEUED,
        ),
    )
    logger.info(
        "chat call accepted id=%s model=%s hold=%s stream=%s",
        request.id,
        offer.model_name,
        call.hold,
        call.stream,
    )
    return request


def intake_submit_deal(
    *,
    user_id: int,
    deal: ServiceDeal,
    body: dict,
    api_key: ApiKey | None = None,
    webhook: dict | None = None,
) -> tuple[ServiceRequest, list[ServiceRequest], bool]:
    """Returns (parent, children, created); created is False for a live identical deal."""
    key_check_allowed(key=api_key, target=f"deal/{deal.name}")
    plan = deals.deal_plan(deal=deal, body=body)
    parent, created = _insert_or_committed(
        lambda: deals.deal_insert(user_id=user_id, plan=plan, webhook=webhook)
    )
    logs.bind(request_id=parent.id, client=user_id, offer=f"deal/{deal.name}")
    if not created:
        return parent, deals.request_children(parent), False
    children: list[ServiceRequest] = []
    _accept(
        parent,
        amount=plan.price,
        api_key=api_key,
        start=lambda: children.extend(deals.deal_start(parent=parent, plan=plan)),
        fail=lambda: deals.deal_fail(
            parent, code="unavailable", message="the queue was unavailable"
        ),
    )
    logger.info("deal accepted id=%s deal=%s price=%s", parent.id, deal.name, plan.price)
    return parent, children, True


def _accept(
    request: ServiceRequest,
    *,
    amount: int,
    api_key: ApiKey | None,
    start: Callable[[], object],
    fail: Callable[[], ServiceRequest | None],
) -> None:
    """Hold `amount` for the inserted request, then `start` its work; undo each step that
    cannot complete (402 discards the document; a failed start ends it and releases)."""
    try:
        account_hold(user_id=request.user_id, request_id=request.id, amount=amount, api_key=api_key)
    except BaseException:
        request_discard(request_id=request.id)
        raise
    try:
        start()
    except Exception:
        logger.exception("intake could not start the work id=%s", request.id)
        ended = fail()
        if ended is not None:
            request_settle(request=ended)
        raise ApplicationError(
            "unavailable", "the queue is unavailable; retry shortly", status=503
        ) from None


def _insert_or_committed(
    insert: Callable[[], tuple[ServiceRequest, bool]],
) -> tuple[ServiceRequest, bool]:
    """`insert()`'s new request, or the identical live one it found once that one is committed.

    The identical one may be another POST's that is between insert and hold: wait for its
    hold; if that intake discards it instead (402), insert again. 503 when still undecided
    after DUPLICATE_WAIT (a stalled intake; recon converges its document)."""
    deadline = time.monotonic() + defaults.DUPLICATE_WAIT
    while True:
        request, created = insert()
        if created or _await_hold(request, deadline):
            return request, created


def _await_hold(request: ServiceRequest, deadline: float) -> bool:
    """True once the request's hold is in the ledger (at once, for all but a racing POST),
    False once its document is gone (discarded)."""
    delay = defaults.DUPLICATE_POLL_FIRST
    while not account_hold_exists(request_id=request.id):
        if not request_exists(request_id=request.id):
            return False
        left = deadline - time.monotonic()
        if left <= 0:
            raise ApplicationError(
                "unavailable",
                "an identical request is still being submitted; retry shortly",
                status=503,
            )
        time.sleep(min(delay, left))
        delay = min(delay * 2, defaults.DUPLICATE_POLL_MAX)
    return True

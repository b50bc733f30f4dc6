"""Intake: a client's POST becomes a held, stored and queued request, or changes nothing.

Order matters for "nothing lost, nothing double-charged":
1. the request document is inserted (its unique id settles identical concurrent POSTs);
2. the price is held (a conditional UPDATE: 402 and the document is discarded if short);
3. the job is enqueued (on failure the request ends `failed` and the hold is released).
A crash between steps leaves a queued document that recon finds and converges.
"""

import logging

from api.documents import QUEUED, ServiceRequest
from api.errors import ApplicationError
from api.models import ServiceOffer
from api.services.accounts import account_hold, account_release
from api.services.requests import request_discard, request_fail, request_submit
from executor.queues import enqueue_request, route_for_handler
from marketplace import logs

logger = logging.getLogger(__name__)


def intake_submit(
    *, user_id: int, offer: ServiceOffer, inputs: dict
) -> tuple[ServiceRequest, bool]:
    """Returns (request, created); created is False for a live identical request (no charge)."""
    resource, queue = route_for_handler(offer.handler_id)
    request, created = request_submit(
        user_id=user_id, offer=offer, inputs=inputs, queue=queue, resource=resource
    )
    # The rest of this HTTP request's records carry the request's story (marketplace/logs.py).
    logs.bind(request_id=request.id, client=user_id, offer=f"{offer.service}/{offer.action}")
    if not created:
        return request, False
    try:
        account_hold(user_id=user_id, request_id=request.id, amount=offer.price)
    except BaseException:
        request_discard(request_id=request.id)
        raise
    _enqueue_or_fail(request)
    logger.info("request accepted id=%s offer=%s price=%s", request.id, offer, offer.price)
    return request, True


def _enqueue_or_fail(request: ServiceRequest) -> None:
    try:
        enqueue_request(request_id=request.id, queue=request.queue)
    except Exception:
        logger.exception("enqueue failed id=%s", request.id)
        request_fail(
            request_id=request.id,
            code="unavailable",
            message="the queue was unavailable",
            from_status=QUEUED,
        )
        account_release(request_id=request.id, note="enqueue failed")
        raise ApplicationError(
            "unavailable", "the queue is unavailable; retry shortly", status=503
        ) from None

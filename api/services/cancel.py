"""Client cancel: a queued request ends at once and is settled (its hold released); a running
one is signalled to stop (its executor ends and settles it); a deal ends with its items."""

import logging

from api.documents import ServiceRequest
from api.services.deals import deal_cancel
from api.services.requests import request_cancel
from api.services.settlement import request_settle
from executor.queues import cancel_job, signal_stop_job

logger = logging.getLogger(__name__)


def request_cancel_by_client(*, request: ServiceRequest) -> tuple[ServiceRequest, str]:
    """Returns (request, outcome): "canceled", "cancel_requested" or "terminal"."""
    if request.kind == "deal":
        request, outcome = deal_cancel(request)
    else:
        request, outcome = request_cancel(request_id=request.id)
    if outcome == "canceled":
        request_settle(request=request)
        if request.kind != "deal":
            cancel_job(request.id)  # best effort: a job that still runs finds it canceled
        logger.info("request canceled id=%s", request.id)
    elif outcome == "cancel_requested":
        signal_stop_job(request.id)  # best effort: the result is discarded anyway
        logger.info("request cancel requested id=%s", request.id)
    return request, outcome

"""Client cancel: a queued request ends at once; a running one is signalled to stop."""

import logging

from api.documents import ServiceRequest
from api.services.accounts import account_release
from api.services.requests import request_cancel
from executor.queues import cancel_job, signal_stop_job

logger = logging.getLogger(__name__)


def request_cancel_by_client(*, request_id: str) -> tuple[ServiceRequest, str]:
    """Returns (request, outcome): "canceled", "cancel_requested" or "terminal"."""
    request, outcome = request_cancel(request_id=request_id)
    if outcome == "canceled":
        account_release(request_id=request_id, note="canceled by the client")
        cancel_job(request_id)  # best effort: a job that still runs finds the request canceled
        logger.info("request canceled id=%s", request_id)
    elif outcome == "cancel_requested":
        signal_stop_job(request_id)  # best effort: the result is discarded anyway
        logger.info("request cancel requested id=%s", request_id)
    return request, outcome

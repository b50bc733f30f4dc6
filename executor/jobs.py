"""RQ jobs: thin wrappers that load a request, run its handler calls, and record the outcome."""

import asyncio
import logging

from django.conf import settings
from rq import Retry, get_current_job
from rq.timeouts import JobTimeoutException

from api.services.requests import (
    request_fail,
    request_requeue,
    request_start,
    request_succeed,
)
from executor import runtime
from executor.handlers import HandlerCall, HandlerError, UnknownHandler, get_handler

logger = logging.getLogger(__name__)


def run_request(request_id: str) -> str | Retry:
    """Execute one request; returns its final status (or "skipped" if it was not queued).

    When the executor shuts down mid-call the request goes back to `queued` and the job
    returns an RQ `Retry`, which puts it back at the front of its queue.
    """
    request = request_start(request_id=request_id)
    if request is None:
        logger.info("request skipped id=%s (not queued)", request_id)
        return "skipped"
    try:
        results = runtime.run(execute(request))
    except runtime.HandedBack:
        request_requeue(request_id=request_id, note="handed back by a stopping executor")
        logger.warning("request handed back id=%s", request_id)
        return _retry_now()
    except JobTimeoutException:
        # RQ's backstop fired (the handler ignored cancellation): end the request, let RQ record it.
        request_fail(request_id=request_id, code="timeout", message="the job timed out")
        raise
    except HandlerError as exc:
        logger.info("request failed id=%s code=%s", request_id, exc.code)
        request_fail(request_id=request_id, code=exc.code, message=exc.message)
        return "failed"
    except Exception:
        logger.exception("handler crashed id=%s handler=%s", request_id, request.handler)
        request_fail(
            request_id=request_id, code="handler_error", message="the handler failed unexpectedly"
        )
        return "failed"
    request_succeed(request_id=request_id, results=results)
    logger.info("request succeeded id=%s", request_id)
    return "succeeded"


def _retry_now() -> Retry:
    job = get_current_job()
    return Retry(max=(job.number_of_retries or 0) + 1 if job else 1, enqueue_at_front=True)


async def execute(request) -> list:
    """Call the request's handler `create_qty` times, concurrently; results in call order.

    The first failure cancels the sibling calls (no paid upstream work for a failed request),
    and the whole execution must finish within SVC_JOB_TIMEOUT.
    """
    try:
        handler = get_handler(request.handler)
    except UnknownHandler:
        raise HandlerError("unknown_handler", f"handler {request.handler} is not installed")
    calls = [
        HandlerCall(
            request_id=request.id,
            prompt=request.prompt,
            inputs=dict(request.inputs),
            params=dict(request.params or {}),
            index=i,
        )
        for i in range(request.create_qty)
    ]
    timeout = settings.SVC_JOB_TIMEOUT
    try:
        async with asyncio.timeout(timeout), asyncio.TaskGroup() as group:
            tasks = [group.create_task(_call(handler, call)) for call in calls]
    except TimeoutError:
        raise HandlerError("timeout", f"the handler did not finish within {timeout}s")
    except ExceptionGroup as failures:
        raise failures.exceptions[0] from None
    return [task.result() for task in tasks]


async def _call(handler, call: HandlerCall):
    if handler.is_async:
        return await handler.func(call)
    # Sync handlers run in the loop's thread pool so they never block the other calls.
    return await asyncio.to_thread(handler.func, call)

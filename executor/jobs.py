"""RQ jobs: thin wrappers that load a request, run its handler calls, and record the outcome.

One job per request. Its steps, each safe to repeat:
1. peek at the request: not queued → settle credits if it is terminal (a crash may have
   stopped an earlier run between Mongo and SQL) and stop;
2. take the resource's slots and integration credits (Redis, atomic): when saturated or
   exhausted the request stays queued and the job is retried later (or fails, by policy);
3. claim the request (queued → running), call the handler `create_qty` times within the
   slots, record the outcome, then settle it (api/services/settlement.py: the hold captured
   or released, the usage of its calls recorded, a deal's item moving its deal on).
"""

import logging
import math
import random

from django.conf import settings
from rq import Retry, get_current_job
from rq.timeouts import JobTimeoutException

from api.chat import charge_for
from api.documents import QUEUED, TERMINAL, ServiceRequest
from api.selectors import request_get
from api.services.deals import deal_child_started
from api.services.requests import (
    now,
    request_expire,
    request_fail,
    request_metered,
    request_note_try,
    request_requeue,
    request_start,
    request_succeed,
)
from api.services.settlement import Usage, request_settle
from executor import defaults, resources, routes, runtime
from executor import metrics as executor_metrics
from executor.handlers import HandlerError, UnknownHandler, get_handler
from executor.relay import ChatRelay
from infra import logs

logger = logging.getLogger(__name__)


def run_request(request_id: str) -> str | Retry:
    """Execute one request; returns its final status, "skipped", or an RQ Retry.

    Every log record of the job, the handler's included (the context follows the calls onto
    the shared loop), carries the request id, then its client, offer and attempt."""
    with logs.context(request_id=request_id):
        return _run_request(request_id)


def _run_request(request_id: str) -> str | Retry:
    request = request_get(request_id=request_id)
    if request is not None:
        logs.bind(
            client=request.user_id,
            offer=f"{request.service}/{request.action}",
            parent=request.parent,
            resource=request.resource,
        )
    if request is None or request.status != QUEUED:
        if request is not None and request.status in TERMINAL:
            request_settle(request=request)
        return "skipped"
    if request.awaits_previous:  # a pipeline step: the step before it queues it when done
        return "skipped"
    if request.expires_at is not None and request.expires_at <= now():
        return _finish(request_expire(request_id=request_id, from_status=QUEUED, current=request))
    try:
        handler = get_handler(request.handler)
    except UnknownHandler:
        return _finish(
            request_fail(
                request_id=request_id,
                code="unknown_handler",
                message=f"handler {request.handler} is not installed",
                from_status=QUEUED,
                current=request,
            )
        )
    resource = resources.get_resource(request.resource or handler.resource)
    try:
        grant = _acquire(request, resource)
    except ValueError as exc:  # asks for more than the resource could ever give
        return _finish(
            request_fail(
                request_id=request_id,
                code="resource_misconfigured",
                message=str(exc),
                from_status=QUEUED,
                current=request,
            )
        )
    if isinstance(grant, resources.Denied):
        return _denied(request, resource, grant)
    job = get_current_job()
    worker = (job.worker_name or "") if job else ""
    deferred = routes.open_breaker_wait(request, resource)  # breaker_policy: wait
    if deferred:
        resources.release(grant, refund=True)
        return _retry(deferred)
    started = request_start(request_id=request_id, current=request, worker=worker)
    if started is None:  # canceled or expired meanwhile: the calls were never made
        resources.release(grant, refund=True)
        return "skipped"
    if started.parent:
        deal_child_started(started)
    logs.bind(attempt=started.attempts)
    logger.info("request started id=%s resource=%s", request_id, resource.name)
    with executor_metrics.running(resource.name):
        return _execute(started, handler, resource, grant)


def _execute(request: ServiceRequest, handler, resource, grant) -> str | Retry:
    request_id = request.id
    relay = _relay(request)
    try:
        outcome = runtime.run(execute(request, handler, resource, grant, relay=relay))
    except runtime.HandedBack:
        if relay is not None and relay.close():  # output was sent: another run would repeat it
            _meter(request, relay, succeeded=False)
            return _finish(
                request_fail(
                    request_id=request_id,
                    code="interrupted",
                    message="the executor stopped while the call streamed",
                    current=request,
                ),
                grant=grant,
            )
        request_requeue(
            request_id=request_id, note="handed back by a stopping executor", current=request
        )
        logger.warning("request handed back id=%s", request_id)
        return _retry(0)
    except BaseException:
        _meter(request, relay, succeeded=False)
        return _ended_badly(request, grant)
    _meter(request, relay, succeeded=True)
    return _finish(
        request_succeed(
            request_id=request_id,
            results=outcome.results,
            current=request,
            handler_used=outcome.handler_used,
            tries=outcome.tries,
        ),
        grant=grant,
    )


def _ended_badly(request: ServiceRequest, grant) -> str:
    """The outcome of an execution that raised (called from its except block)."""
    request_id = request.id
    try:
        raise
    except runtime.Canceled:
        return _finish(
            request_fail(
                request_id=request_id, code="canceled", message="canceled", current=request
            ),
            grant=grant,
        )
    except JobTimeoutException:
        # RQ's backstop fired (the handler ignored cancellation): end the request, let RQ record it.
        _finish(
            request_fail(
                request_id=request_id,
                code="timeout",
                message="the job timed out",
                current=request,
            ),
            grant=grant,
        )
        raise
    except HandlerError as exc:
        logger.info("request failed id=%s code=%s", request_id, exc.code)
        return _finish(
            request_fail(
                request_id=request_id, code=exc.code, message=exc.message, current=request
            ),
            grant=grant,
        )
    except Exception:
        logger.exception("handler crashed id=%s handler=%s", request_id, request.handler)
        return _finish(
            request_fail(
                request_id=request_id,
                code="handler_error",
                message="the handler failed unexpectedly",
                current=request,
            ),
            grant=grant,
        )


def _relay(request: ServiceRequest) -> ChatRelay | None:
    """A gateway call's relay (executor/relay.py); None for every other request."""
    if not request.meter:
        return None
    return ChatRelay(
        request.id,
        model=request.meter.get("model") or "",
        publish=request.stream,
        created=int(request.created_at.timestamp()),
    )


def _meter(request: ServiceRequest, relay: ChatRelay | None, *, succeeded: bool) -> None:
    """Record what a gateway call used and costs (api/chat.py) before it ends: the upstream's
    usage, else the input counted at intake and the output relayed."""
    if relay is None:
        return
    relayed = relay.close()
    relay.drained()  # what was handed over goes out before the call's end is published
    meter = request.meter
    if relay.usage and isinstance(relay.usage.get("completion_tokens"), int):
        usage = {**relay.usage, "source": "upstream"}
    else:
        prompt = meter.get("input_tokens") or 0
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": relayed,
            "total_tokens": prompt + relayed,
            "source": "relayed",
        }
    charge, overrun = charge_for(meter, usage, succeeded=succeeded)
    try:
        request_metered(request=request, usage=usage, charge=charge)
    except Exception:  # the call still ends; it is not charged beyond its fixed price
        logger.exception("usage not recorded id=%s", request.id)
        return
    if charge:
        source = usage["source"]
        executor_metrics.GATEWAY_TOKENS.labels("input", source).inc(usage["prompt_tokens"] or 0)
        executor_metrics.GATEWAY_TOKENS.labels("output", source).inc(
            usage["completion_tokens"] or 0
        )
    if overrun:
        executor_metrics.GATEWAY_OVERRUN.inc(overrun)
        logger.warning(
            "gateway call cost more than its hold id=%s hold=%s overrun=%s",
            request.id,
            meter["hold"],
            overrun,
        )
        request_note_try(
            request_id=request.id,
            note=f"the call cost {overrun} credits more than its hold of {meter['hold']}; "
            "the hold is captured, no more",
            tries=0,
            code="overrun",
            overrun=overrun,
        )


def _acquire(request: ServiceRequest, resource):
    """Take the request's slots and credits, waiting a little in-process while the resource is
    saturated (unless its policy is to fail at once)."""
    wait = 0.0 if resource.policy == "fail" else defaults.SATURATED_WAIT_IN_PROCESS
    return resources.acquire_waiting(
        resource,
        calls=request.create_qty,
        credits_per_call=request.handler_credits,
        owner=request.id,
        wait=wait,
    )


def _denied(request: ServiceRequest, resource, denied) -> str | Retry:
    if resource.policy == "fail":
        return _finish(
            request_fail(
                request_id=request.id,
                code=f"resource_{denied.reason}",
                message=f"resource {resource.name} is {denied.reason}",
                from_status=QUEUED,
                current=request,
            )
        )
    job = get_current_job()
    attempt = (job.number_of_retries or 0) if job else 0
    if denied.reason == "exhausted":
        delay = denied.retry_after + random.uniform(0, 1)  # spread the rush at rollover
    else:
        backoff = min(
            defaults.SATURATED_BACKOFF_MAX, defaults.SATURATED_BACKOFF_BASE * 2 ** min(attempt, 10)
        )
        delay = random.uniform(backoff / 2, backoff)
    logger.info(
        "request waits for resource id=%s resource=%s reason=%s retry_in=%.1fs",
        request.id,
        resource.name,
        denied.reason,
        delay,
    )
    return _retry(delay)


def _retry(delay: float) -> Retry:
    """Put the job back: at the front of its queue now (0), else scheduled after `delay`
    seconds, rounded up (RQ schedules in whole seconds; rounding down would spin)."""
    job = get_current_job()
    retries = (job.number_of_retries or 0) if job else 0
    seconds = math.ceil(delay) if delay > 0 else 0
    return Retry(max=retries + 1, interval=[seconds], enqueue_at_front=seconds == 0)


def _finish(request: ServiceRequest | None, grant=None) -> str:
    """Settle a request that just ended, with the usage of its calls if it made any."""
    if request is None:
        return "skipped"
    usage = None
    if grant is not None:  # it made calls: record what they cost, on what served them
        handler, resource, per_call = routes.served_by(request)
        calls = request.create_qty
        usage = Usage(calls=calls, credits=per_call * calls, handler=handler, resource=resource)
    request_settle(request=request, usage=usage)  # the client sees credits settle with the status
    if usage is not None:
        executor_metrics.calls_made(usage.resource, usage.credits)
    logger.info("request %s id=%s", request.status, request.id)
    return request.status


async def execute(request, handler, resource, grant, relay=None) -> routes.Outcome:
    """Make the request's `create_qty` calls, at most `grant.slots` at once, with retries, the
    resource's circuit breaker and the offer's fallbacks (executor/routes.py).

    The first failure cancels the sibling calls (no paid upstream work for a failed request),
    and the whole execution must finish within SVC_JOB_TIMEOUT.
    """
    return await routes.execute(
        request, handler, resource, grant, timeout=settings.SVC_JOB_TIMEOUT, relay=relay
    )

"""Recon's sweeps: MongoDB is the system of record; the queues and the ledger converge to it.

Each sweep reads only stuck work, through indexes (status + a timestamp), in batches, so it
costs what the stuck work costs, not what the history costs. Each repair first claims its
request with a conditional update (`recon_at`), so several recon processes never repair the
same request twice, and every repair is idempotent: running a sweep again changes nothing.

- running, but its executor stopped beating (executor/liveness.py): back to the queue with
  backoff while attempts remain, else `failed` with code `abandoned`; running long past
  SVC_JOB_TIMEOUT on a live executor: `failed` (`abandoned`); a streamed gateway call that
  had relayed output: `failed` (`interrupted`), charged what its chunk stream says was sent
  (run again, its client would get it twice);
- RQ's failed registry names a job whose request still runs: `failed` (`job_failed`);
- queued, older than a grace period, with no live RQ job (a scheduled retry long overdue
  counts as none: no scheduler moves it): enqueued again; past its
  `expires_at`: `expired`; a pipeline step whose predecessor ended: its deal moves on; a
  deal whose intake stopped before its children existed: `failed`, hold released;
- a hold with no settlement whose request ended or is gone: captured or released;
- succeeded, past `expires_at`: `expired`, results purged, metadata and charge kept.
"""

import logging
from collections import Counter
from datetime import timedelta

from django.conf import settings
from rq.registry import FailedJobRegistry

from api import selectors
from api.documents import QUEUED, RUNNING, TERMINAL, ServiceRequest
from api.services import deals
from api.services.requests import (
    now,
    request_claim,
    request_expire,
    request_fail,
    request_meter_lost,
    request_purge_results,
    request_requeue,
)
from api.services.settlement import hold_settle_orphaned, request_settle
from executor import liveness
from executor.queues import (
    all_queue_names,
    cancel_job,
    enqueue_again,
    job_timeout,
    live_jobs,
)
from infra.stores import RQ_SERIALIZER, redis_connection
from recon import defaults
from recon.metrics import REPAIRED

logger = logging.getLogger(__name__)


def sweep() -> Counter:
    """One pass of every sweep; returns the repairs made, by reason."""
    repaired = Counter()
    for step in (sweep_running, sweep_failed_jobs, sweep_queued, sweep_holds, sweep_expired):
        repaired.update(step())
    for reason, count in repaired.items():
        REPAIRED.labels(reason=reason).inc(count)
    if repaired:
        logger.info("recon repaired %s", dict(repaired))
    return repaired


# --- running --------------------------------------------------------------------------------


def sweep_running() -> Counter:
    repaired = Counter()
    at = now()
    live = liveness.live(redis_connection())
    overdue_before = at - timedelta(seconds=job_timeout() + defaults.DEADLINE_GRACE)
    started_before = at - timedelta(seconds=liveness.dead_after())
    for doc in selectors.requests_running_since_before(started_before, limit=defaults.BATCH):
        dead = doc.worker not in live
        overdue = doc.started_at < overdue_before
        if not (dead or overdue) or not _claim(doc.id, RUNNING):
            continue
        relayed = request_meter_lost(request=doc)  # a gateway call's streamed output
        if overdue and not dead:
            reason = "overdue"
            message = f"still running {settings.SVC_JOB_TIMEOUT}s past its start: abandoned"
        elif relayed:
            reason = "interrupted"
            message = (
                f"its executor {doc.worker} was lost after {relayed} chunks were relayed; "
                "they are charged, the call is not run again"
            )
        elif doc.attempts >= settings.SVC_MAX_ATTEMPTS:
            reason = "abandoned"
            message = f"its executor died on each of {doc.attempts} attempts"
        else:
            # Back to queued; the queued sweep enqueues it once `retry_at` has passed (recon's
            # own backoff: RQ's scheduler may be the dead executor's, its lock not yet free).
            retry_at = at + timedelta(seconds=_backoff(doc.attempts))
            note = f"recon: executor {doc.worker} lost"
            if request_requeue(request_id=doc.id, note=note, retry_at=retry_at):
                cancel_job(doc.id)  # the dead executor's RQ job: out of the started registry
                repaired["executor_lost"] += 1
            continue
        code = "interrupted" if reason == "interrupted" else "abandoned"
        ended = request_fail(request_id=doc.id, code=code, message=message)
        if ended is not None:
            request_settle(request=ended)
            repaired[reason] += 1
    return repaired


def _backoff(attempts: int) -> float:
    return min(defaults.RETRY_BACKOFF_MAX, defaults.RETRY_BACKOFF_BASE * 2 ** max(attempts - 1, 0))


def sweep_failed_jobs() -> Counter:
    """Jobs RQ recorded as failed (newest first) whose request still says running."""
    repaired = Counter()
    connection = redis_connection()
    for name in all_queue_names():
        registry = FailedJobRegistry(name, connection=connection, serializer=RQ_SERIALIZER)
        ids = [i.decode() for i in connection.zrevrange(registry.key, 0, defaults.BATCH - 1)]
        if not ids:
            continue
        for request_id in selectors.request_ids_running(ids):
            if not _claim(request_id, RUNNING):
                continue
            ended = request_fail(
                request_id=request_id, code="job_failed", message="the job failed unexpectedly"
            )
            if ended is not None:
                request_settle(request=ended)
                repaired["job_failed"] += 1
    return repaired


# --- queued ---------------------------------------------------------------------------------


def sweep_queued() -> Counter:
    repaired = Counter()
    at = now()
    queued_before = at - timedelta(seconds=settings.SVC_RECON_QUEUED_GRACE)
    stuck = list(selectors.requests_queued_since_before(queued_before, limit=defaults.BATCH))
    waiting = []
    for doc in stuck:
        if doc.kind == "deal":
            repaired.update(_deal_parent(doc))
        elif doc.expires_at is not None and doc.expires_at <= at:
            ended = request_expire(request_id=doc.id, from_status=QUEUED, current=doc)
            if ended is not None:
                cancel_job(doc.id)
                request_settle(request=ended)
                repaired["expired"] += 1
        elif doc.awaits_previous:
            repaired.update(_pipeline_step(doc))
        elif doc.retry_at is not None and doc.retry_at > at:
            continue  # backing off after its executor died
        else:
            waiting.append(doc)
    alive = (
        live_jobs([doc.id for doc in waiting], started_within=settings.SVC_RECON_QUEUED_GRACE)
        if waiting
        else set()
    )
    for doc in waiting:
        note = "recon: enqueued again" if doc.retry_at else "recon: its job was missing"
        if doc.id in alive or not _claim(doc.id, QUEUED, note=note):
            continue
        enqueue_again(request_id=doc.id, queue=doc.queue)
        repaired["retried" if doc.retry_at else "job_missing"] += 1
    return repaired


def _pipeline_step(step: ServiceRequest) -> Counter:
    """A step still waiting although the item before it ended: move its deal on."""
    before = selectors.deal_item_before(step)
    if before is None or before.status not in TERMINAL:
        return Counter()
    request_settle(request=before)  # moves its deal on: the step is queued or the deal ends
    return Counter(pipeline_step=1)


def _deal_parent(parent: ServiceRequest) -> Counter:
    """A deal still queued: fine while its children exist; its intake stopped half-way if not."""
    if selectors.deal_children_exist(parent) or not _claim(parent.id, QUEUED):
        return Counter()
    ended = deals.deal_fail_incomplete(parent)
    if ended is not None:
        request_settle(request=ended)
    return Counter(deal_incomplete=1)


# --- holds ----------------------------------------------------------------------------------


def sweep_holds() -> Counter:
    """Holds older than a grace period with no settlement: settle those whose request ended."""
    repaired = Counter()
    cutoff = now() - timedelta(seconds=settings.SVC_RECON_HOLD_GRACE)
    for request_id in selectors.holds_unsettled_before(cutoff, limit=defaults.BATCH):
        request = selectors.request_get(request_id=request_id)
        if request is None:
            if hold_settle_orphaned(request_id=request_id):
                repaired["hold_orphaned"] += 1
        elif request.status in TERMINAL:
            request_settle(request=request)
            repaired["hold_settled"] += 1
    return repaired


# --- expiration -----------------------------------------------------------------------------


def sweep_expired() -> Counter:
    """Succeeded requests past their `expires_at`: `expired`, results purged, metadata (and
    the charge) kept. Deal children keep theirs: their deal's results hold the outputs."""
    repaired = Counter()
    at = now()
    for doc in selectors.requests_succeeded_expired(at, limit=defaults.BATCH):
        purged = request_purge_results(
            request_id=doc.id, note="recon: results purged after expiration"
        )
        if purged is not None:
            repaired["results_purged"] += 1
    return repaired


# --- claims ---------------------------------------------------------------------------------


def _claim(request_id: str, status: str, note: str = "") -> bool:
    """Take the request for a repair unless another recon took it within CLAIM_SECONDS."""
    return request_claim(
        request_id=request_id, status=status, for_seconds=defaults.CLAIM_SECONDS, note=note
    )

"""Recon's sweeps: MongoDB is the system of record; the queues and the ledger converge to it.

Each sweep reads only stuck work, through indexes (status + a timestamp), in batches, so it
costs what the stuck work costs, not what the history costs. Each repair first claims its
request with a conditional update (`recon_at`), so several recon processes never repair the
same request twice, and every repair is idempotent: running a sweep again changes nothing.

- running, but its executor stopped beating (executor/liveness.py): back to the queue with
  backoff while attempts remain, else `failed` with code `abandoned`; running long past
  SVC_JOB_TIMEOUT on a live executor: `failed` (`abandoned`);
- RQ's failed registry names a job whose request still runs: `failed` (`job_failed`);
- queued, older than a grace period, with no live RQ job: enqueued again; past its
  `expires_at`: `expired`; a pipeline step whose predecessor ended: its deal moves on; a
  deal whose intake stopped before its children existed: `failed`, hold released;
- a hold with no settlement whose request ended or is gone: captured or released;
- succeeded, past `expires_at`: `expired`, results purged, metadata and charge kept.
"""

import logging
from collections import Counter
from datetime import timedelta

from django.conf import settings
from mongoengine.queryset.visitor import Q
from rq.registry import FailedJobRegistry

from api.documents import EXPIRED, QUEUED, RUNNING, SUCCEEDED, TERMINAL, ServiceRequest
from api.models import LedgerEntry
from api.services import deals
from api.services.accounts import account_release
from api.services.requests import (
    now,
    request_expire,
    request_fail,
    request_requeue,
    transition,
)
from executor import liveness
from executor.jobs import settle, settle_and_move_on
from executor.queues import (
    JOB_TIMEOUT_MARGIN,
    all_queue_names,
    cancel_job,
    enqueue_request,
    live_jobs,
    redis_connection,
)
from recon.metrics import REPAIRED

logger = logging.getLogger(__name__)

# Requests (or holds) one sweep looks at; the rest wait for the next sweep.
BATCH = 500
# Seconds one recon process owns a request it claimed; another may claim it after that (by
# then the first one's repair shows: a live job, a new status).
CLAIM_SECONDS = 5
# Seconds past SVC_JOB_TIMEOUT (and RQ's own margin) after which a running request is overdue.
DEADLINE_GRACE = 60
# Backoff before the n-th retry of a request whose executor died: BASE × 2^(n-1), capped.
RETRY_BACKOFF_BASE = 2.0
RETRY_BACKOFF_MAX = 60.0


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
    overdue_before = at - timedelta(
        seconds=settings.SVC_JOB_TIMEOUT + JOB_TIMEOUT_MARGIN + DEADLINE_GRACE
    )
    for doc in running_candidates(at):
        dead = doc.worker not in live
        overdue = doc.started_at < overdue_before
        if not (dead or overdue) or not _claim(doc.id, RUNNING):
            continue
        if overdue and not dead:
            reason = "overdue"
            message = f"still running {settings.SVC_JOB_TIMEOUT}s past its start: abandoned"
        elif doc.attempts >= settings.SVC_MAX_ATTEMPTS:
            reason = "abandoned"
            message = f"its executor died on each of {doc.attempts} attempts"
        else:
            # Back to queued; the queued sweep enqueues it once `retry_at` has passed (recon's
            # own backoff: RQ's scheduler may be the dead executor's, its lock not yet free).
            retry_at = at + timedelta(seconds=_backoff(doc.attempts))
            if request_requeue(request_id=doc.id, note=f"recon: executor {doc.worker} lost"):
                ServiceRequest.objects(id=doc.id).update_one(set__retry_at=retry_at)
                cancel_job(doc.id)  # the dead executor's RQ job: out of the started registry
                repaired["executor_lost"] += 1
            continue
        ended = request_fail(request_id=doc.id, code="abandoned", message=message)
        if ended is not None:
            settle_and_move_on(ended)
            repaired[reason] += 1
    return repaired


def _backoff(attempts: int) -> float:
    return min(RETRY_BACKOFF_MAX, RETRY_BACKOFF_BASE * 2 ** max(attempts - 1, 0))


def sweep_failed_jobs() -> Counter:
    """Jobs RQ recorded as failed (newest first) whose request still says running."""
    repaired = Counter()
    connection = redis_connection()
    for name in all_queue_names():
        registry = FailedJobRegistry(name, connection=connection)
        ids = [i.decode() for i in connection.zrevrange(registry.key, 0, BATCH - 1)]
        if not ids:
            continue
        for doc in ServiceRequest.objects(id__in=ids, status=RUNNING).only("id"):
            if not _claim(doc.id, RUNNING):
                continue
            ended = request_fail(
                request_id=doc.id, code="job_failed", message="the job failed unexpectedly"
            )
            if ended is not None:
                settle_and_move_on(ended)
                repaired["job_failed"] += 1
    return repaired


# --- queued ---------------------------------------------------------------------------------


def sweep_queued() -> Counter:
    repaired = Counter()
    at = now()
    stuck = list(queued_candidates(at))
    waiting = []
    for doc in stuck:
        if doc.kind == "deal":
            repaired.update(_deal_parent(doc))
        elif doc.expires_at is not None and doc.expires_at <= at:
            ended = request_expire(request_id=doc.id, from_status=QUEUED, current=doc)
            if ended is not None:
                cancel_job(doc.id)
                settle_and_move_on(ended)
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
        enqueue_request(request_id=doc.id, queue=doc.queue)
        repaired["retried" if doc.retry_at else "job_missing"] += 1
    return repaired


def _pipeline_step(step: ServiceRequest) -> Counter:
    """A step still waiting although the item before it ended: move its deal on."""
    parent = ServiceRequest.objects(id=step.parent).only("children").first()
    if parent is None or step.position == 0:
        return Counter()
    before = ServiceRequest.objects(id=parent.children[step.position - 1]).first()
    if before is None or before.status not in TERMINAL:
        return Counter()
    deals.deal_child_ended(before)
    return Counter(pipeline_step=1)


def _deal_parent(parent: ServiceRequest) -> Counter:
    """A deal still queued: fine while its children exist; its intake stopped half-way if not."""
    found = ServiceRequest.objects(id__in=list(parent.children)).count()
    if found == len(parent.children) or not _claim(parent.id, QUEUED):
        return Counter()
    deals.deal_fail_incomplete(parent)
    return Counter(deal_incomplete=1)


# --- holds ----------------------------------------------------------------------------------


def sweep_holds() -> Counter:
    """Holds older than a grace period with no settlement: settle those whose request ended."""
    repaired = Counter()
    cutoff = now() - timedelta(seconds=settings.SVC_RECON_HOLD_GRACE)
    settled = LedgerEntry.objects.filter(settles__isnull=False).values("settles")
    open_holds = (
        LedgerEntry.objects.filter(kind=LedgerEntry.HOLD, created_at__lt=cutoff)
        .exclude(request_id__in=settled)
        .values_list("request_id", flat=True)[:BATCH]
    )
    for request_id in open_holds:
        request = ServiceRequest.objects(id=request_id).first()
        if request is None:
            if account_release(request_id=request_id, note="recon: the request is gone"):
                repaired["hold_orphaned"] += 1
        elif request.status in TERMINAL:
            if request.kind == "deal":
                deals.deal_settle(request)
            else:
                settle(request)
            repaired["hold_settled"] += 1
    return repaired


# --- expiration -----------------------------------------------------------------------------


def sweep_expired() -> Counter:
    """Succeeded requests past their `expires_at`: `expired`, results purged, metadata (and
    the charge) kept. Deal children keep theirs: their deal's results hold the outputs."""
    repaired = Counter()
    at = now()
    for doc in expired_candidates(at):
        purged = transition(
            doc.id,
            from_status=SUCCEEDED,
            to_status=EXPIRED,
            note="recon: results purged after expiration",
            results=[],
        )
        if purged is not None:
            repaired["results_purged"] += 1
    return repaired


# --- what the sweeps read: always through an index led by status --------------------------
# (The hints name the index: the embedded MongoDB's planner scans the collection otherwise.)

STATUS_CREATED = [("status", 1), ("created_at", 1)]
STATUS_EXPIRES = [("status", 1), ("expires_at", 1)]


def running_candidates(at):
    """Offer requests running since before an executor could be declared dead."""
    return (
        ServiceRequest.objects(
            status=RUNNING, kind="offer", started_at__lt=at - timedelta(seconds=liveness.DEAD_AFTER)
        )
        .only("id", "worker", "started_at", "attempts", "queue", "parent")
        .hint(STATUS_CREATED)
        .limit(BATCH)
    )


def queued_candidates(at):
    """Requests queued for longer than the grace period, oldest first."""
    return (
        ServiceRequest.objects(
            status=QUEUED, created_at__lt=at - timedelta(seconds=settings.SVC_RECON_QUEUED_GRACE)
        )
        .hint(STATUS_CREATED)
        .order_by("status", "created_at")
        .limit(BATCH)
    )


def expired_candidates(at):
    """Top-level requests that succeeded and are past their expiration."""
    return (
        ServiceRequest.objects(status=SUCCEEDED, expires_at__lt=at, parent=None)
        .only("id")
        .hint(STATUS_EXPIRES)
        .order_by("status", "expires_at")
        .limit(BATCH)
    )


# --- claims ---------------------------------------------------------------------------------


def _claim(request_id: str, status: str, note: str = "") -> bool:
    """Take the request for a repair unless another recon took it within CLAIM_SECONDS."""
    at = now()
    fresh = Q(recon_at=None) | Q(recon_at__lt=at - timedelta(seconds=CLAIM_SECONDS))
    updates = {"set__recon_at": at}
    if note:
        updates["push__events"] = {"at": at, "status": status, "note": note}
    return bool(
        ServiceRequest.objects(Q(id=request_id, status=status) & fresh).update_one(**updates)
    )

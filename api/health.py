"""What the system looks like now: queues, executors, errors and budgets. Recon reads it each
loop (its gauges and alerts), `/healthz?detail=1` on demand.

Every figure is cheap to read, whatever the size of the history: queue depths are RQ's list
lengths; the oldest queued request of a queue is the first hit of the `(status, created_at)`
index; the error rate is two counts over the `(status, finished_at)` index, so they read the
requests that finished within the window and nothing older. RQ's finished/failed job
registries cannot give it: a job whose request failed still finishes in RQ (it returns the
request's status), so the failed registry holds only jobs that crashed.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from rq import Worker

from api import defaults
from api.documents import (
    FAILED,
    QUEUED,
    STATUS_CREATED_INDEX,
    STATUS_FINISHED_INDEX,
    SUCCEEDED,
    ServiceRequest,
)
from api.services.requests import now
from executor import liveness, resources
from executor.queues import all_queue_names, get_queue
from infra.stores import RQ_SERIALIZER, redis_connection


@dataclass(frozen=True)
class QueueHealth:
    depth: int  # jobs waiting in the RQ queue
    oldest_seconds: float  # age of its oldest queued request (0 when none waits)
    live_executors: int  # live executors that listen on it


@dataclass(frozen=True)
class BudgetUse:
    used: int
    budget: int
    period: str


@dataclass(frozen=True)
class Health:
    at: datetime
    queues: dict[str, QueueHealth]
    executors: frozenset[str]  # names of the live executors
    error_minutes: int  # the error-rate window
    succeeded: int  # requests that ended succeeded / failed within that window
    failed: int
    near_budget: dict[str, BudgetUse] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def error_rate(self) -> float:
        return self.failed / self.finished if self.finished else 0.0


def snapshot() -> Health:
    at = now()
    connection = redis_connection()
    live = liveness.live(connection)
    listeners = _listeners(connection, live)
    queues = {
        name: QueueHealth(
            depth=get_queue(name).count,
            oldest_seconds=_oldest_queued_age(name, at),
            live_executors=listeners.get(name, 0),
        )
        for name in all_queue_names()
    }
    minutes = settings.SVC_HEALTH_ERROR_MINUTES
    since = at - timedelta(minutes=minutes)
    return Health(
        at=at,
        queues=queues,
        executors=frozenset(live),
        error_minutes=minutes,
        succeeded=_ended(SUCCEEDED, since),
        failed=_ended(FAILED, since),
        near_budget=_near_budget(connection),
    )


def _ended(status: str, since: datetime) -> int:
    return (
        ServiceRequest.objects(status=status, finished_at__gte=since)
        .hint(STATUS_FINISHED_INDEX)
        .count()
    )


def _listeners(connection, live: set[str]) -> dict[str, int]:
    """Live executors per queue: RQ's worker records, only those still beating (a kill -9
    leaves its RQ record behind for minutes; its beats stop at once)."""
    counts: dict[str, int] = {}
    for worker in Worker.all(connection=connection, serializer=RQ_SERIALIZER):
        if worker.name in live:
            for name in worker.queue_names():
                counts[name] = counts.get(name, 0) + 1
    return counts


def _oldest_queued_age(queue: str, at: datetime) -> float:
    """Seconds the oldest request waiting in `queue` has waited. Walks the queued part of
    the `(status, created_at)` index from its oldest entry to the first one of this queue;
    pipeline steps still waiting for the step before them are not stuck, so not counted."""
    oldest = (
        ServiceRequest.objects(status=QUEUED, queue=queue, awaits_previous__ne=True)
        .order_by("status", "created_at")
        .hint(
            STATUS_CREATED_INDEX
        )  # a planner may scan the collection once `queue` is in the filter
        .only("created_at")
        .first()
    )
    if oldest is None:
        return 0.0
    created = oldest.created_at
    if created.tzinfo is None:  # MongoDB keeps UTC without the zone
        created = created.replace(tzinfo=at.tzinfo)
    return max(0.0, (at - created).total_seconds())


def _near_budget(connection) -> dict[str, BudgetUse]:
    near = {}
    for resource in resources.load_resource_map().values():
        if resource.budget is None:
            continue
        used = resources.snapshot(resource, connection=connection)["budget_used"]
        if used >= defaults.NEAR_BUDGET * resource.budget:
            near[resource.name] = BudgetUse(used, resource.budget, resource.period)
    return near


def detail(health: Health) -> dict:
    """The snapshot as `/healthz?detail=1` shows it to a metrics reader (no executor names)."""
    return {
        "queues": {
            name: {
                "depth": q.depth,
                "oldest_seconds": round(q.oldest_seconds, 1),
                "live_executors": q.live_executors,
            }
            for name, q in health.queues.items()
        },
        "executors_live": len(health.executors),
        "error_rate": round(health.error_rate, 4),
        "error_window_minutes": health.error_minutes,
        "finished": health.finished,
    }

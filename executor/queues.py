"""RQ queues on the one Redis connection; the API enqueues by job path, never importing handlers."""

import logging
from datetime import UTC, datetime, timedelta
from functools import lru_cache

import redis
from django.conf import settings
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import DeferredJobRegistry, ScheduledJobRegistry

from executor import liveness

logger = logging.getLogger(__name__)

# The job the executor runs for a request (a dotted path so the API need not import it).
RUN_REQUEST_JOB = "executor.jobs.run_request"
# Seconds RQ's own job timeout adds to SVC_JOB_TIMEOUT: the executor's timeout ends the request
# first, RQ's is the backstop for a job stuck outside the handler.
JOB_TIMEOUT_MARGIN = 30
# Seconds RQ keeps a finished job's return value; the request document holds the real result.
RESULT_TTL = 300
# Seconds RQ keeps a failed job for inspection in its failed registry.
FAILURE_TTL = 7 * 24 * 3600


@lru_cache(maxsize=1)
def redis_connection() -> redis.Redis:
    return redis.Redis.from_url(
        settings.REDIS_URL, socket_timeout=10, socket_connect_timeout=3, health_check_interval=30
    )


def route_for_handler(handler_id: str) -> tuple[str, str]:
    """(resource, queue) for a handler: each resource has its own queue, so a saturated
    resource never holds up requests for another. Unknown handlers go to the default queue,
    where the executor fails them as unknown_handler."""
    from executor.handlers import UnknownHandler, get_handler
    from executor.resources import queue_name

    try:
        resource = get_handler(handler_id).resource
    except UnknownHandler:
        return "", settings.SVC_DEFAULT_QUEUE
    return resource, queue_name(resource)


def all_queue_names() -> list[str]:
    """Every queue requests can be routed to: one per resource of a registered handler or of
    the resource map, then the default queue."""
    from executor.handlers import all_handlers
    from executor.resources import load_resource_map, queue_name

    resources = {h.resource for h in all_handlers().values()} | set(load_resource_map())
    return sorted(queue_name(r) for r in resources) + [settings.SVC_DEFAULT_QUEUE]


def get_queue(name: str | None = None) -> Queue:
    return Queue(name or settings.SVC_DEFAULT_QUEUE, connection=redis_connection())


def enqueue_request(*, request_id: str, queue: str, delay: float = 0) -> None:
    """One RQ job per request; the job id is the request id, so the job is never enqueued twice.

    `delay` (seconds) schedules it instead (RQ's scheduler runs in every executor).
    """
    options = dict(
        job_id=request_id,
        job_timeout=settings.SVC_JOB_TIMEOUT + JOB_TIMEOUT_MARGIN,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        description=f"request {request_id}",
    )
    if delay > 0:
        get_queue(queue).enqueue_in(
            timedelta(seconds=delay), RUN_REQUEST_JOB, request_id, **options
        )
    else:
        get_queue(queue).enqueue(RUN_REQUEST_JOB, request_id, **options)


def live_jobs(job_ids: list[str], *, started_within: float) -> set[str]:
    """Those of `job_ids` whose RQ job will run, or runs now, by what Redis really holds.

    A job's status alone can lie after Redis lost its last writes (a kill -9 between AOF
    fsyncs) or an executor dropped a job it had just popped (Redis went away mid-dequeue): the
    hash says `queued` while no queue holds the id. So: `queued` counts only while its queue
    lists it, `scheduled`/`deferred` while their registry holds it, `started` while its
    executor beats and started it less than `started_within` seconds ago (a request still
    queued in MongoDB that long after its job started was dropped). Two round trips.
    """
    connection = redis_connection()
    fields = ("status", "origin", "worker_name", "started_at")
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(Job.key_for(job_id), fields)
        jobs = [
            dict(zip(fields, (v.decode() if v else "" for v in values), strict=True))
            for values in pipe.execute()
        ]
    executors = liveness.live(connection)
    started_after = datetime.now(UTC) - timedelta(seconds=started_within)
    alive, checks = set(), []
    for job_id, job in zip(job_ids, jobs, strict=True):
        status, origin = job["status"], job["origin"]
        if status == "started":
            if job["worker_name"] in executors and _parse_time(job["started_at"]) > started_after:
                alive.add(job_id)
        elif status in _WAITING_IN and origin:
            checks.append((job_id, _WAITING_IN[status].format(origin)))
    if checks:
        with connection.pipeline(transaction=False) as pipe:
            for job_id, key in checks:
                if key.startswith(Queue.redis_queue_namespace_prefix):
                    pipe.lpos(key, job_id)
                else:
                    pipe.zscore(key, job_id)
            found = pipe.execute()
        alive.update(
            job_id for (job_id, _), at in zip(checks, found, strict=True) if at is not None
        )
    return alive


# Where a job that waits to run sits, by its status: its queue's list or a registry.
_WAITING_IN = {
    "queued": Queue.redis_queue_namespace_prefix + "{}",
    "scheduled": ScheduledJobRegistry.key_template,
    "deferred": DeferredJobRegistry.key_template,
}


def _parse_time(value: str) -> datetime:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)


def cancel_job(job_id: str) -> None:
    """Take a queued job out of its queue (into RQ's canceled registry); best effort."""
    try:
        Job.fetch(job_id, connection=redis_connection()).cancel()
    except (NoSuchJobError, InvalidJobOperation, redis.RedisError) as exc:
        logger.info("job %s not canceled in RQ: %s", job_id, type(exc).__name__)


def signal_stop_job(job_id: str) -> None:
    """Ask the executor running a job to stop it (RQ's stop-job command); best effort."""
    try:
        send_stop_job_command(redis_connection(), job_id)
    except (NoSuchJobError, InvalidJobOperation, redis.RedisError) as exc:
        logger.info("stop signal for job %s not sent: %s", job_id, type(exc).__name__)

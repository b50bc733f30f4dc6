"""RQ queues on the one Redis connection; the API enqueues by job path, never importing handlers."""

import logging
from datetime import timedelta
from functools import lru_cache

import redis
from django.conf import settings
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job

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


# RQ job states in which the job will still run (or runs now).
LIVE_JOB_STATES = frozenset({b"queued", b"scheduled", b"deferred", b"started"})


def live_jobs(job_ids: list[str]) -> set[str]:
    """Those of `job_ids` whose RQ job exists and will run or runs now (one round trip)."""
    connection = redis_connection()
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(Job.key_for(job_id), "status")
        states = pipe.execute()
    return {
        job_id for job_id, state in zip(job_ids, states, strict=True) if state in LIVE_JOB_STATES
    }


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

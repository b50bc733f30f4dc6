"""RQ queues on the one Redis connection; the API enqueues by job path, never importing handlers."""

from functools import lru_cache

import redis
from django.conf import settings
from rq import Queue

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


def get_queue(name: str | None = None) -> Queue:
    return Queue(name or settings.SVC_DEFAULT_QUEUE, connection=redis_connection())


def enqueue_request(*, request_id: str, queue: str) -> None:
    """One RQ job per request; the job id is the request id, so the job is never enqueued twice."""
    get_queue(queue).enqueue(
        RUN_REQUEST_JOB,
        request_id,
        job_id=request_id,
        job_timeout=settings.SVC_JOB_TIMEOUT + JOB_TIMEOUT_MARGIN,
        result_ttl=RESULT_TTL,
        failure_ttl=FAILURE_TTL,
        description=f"request {request_id}",
    )

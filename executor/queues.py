"""RQ queues on the process's Redis connection: where a request's job goes (one queue per
resource), enqueueing it by the job's dotted path (so the API never imports the executor's
run loop), and what Redis really holds of a job (recon's `live_jobs`). Jobs are stored as JSON
(infra/stores.py: RQ_SERIALIZER), so every Queue, Job and registry here is made with it."""

import logging
import time
from datetime import UTC, datetime, timedelta

import redis
from django.conf import settings
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.registry import DeferredJobRegistry, ScheduledJobRegistry

from executor import defaults, liveness
from executor.handlers import UnknownHandler, all_handlers, get_handler
from executor.resources import load_resource_map, queue_name
from infra.stores import RQ_SERIALIZER, redis_connection

logger = logging.getLogger(__name__)

# The job the executor runs for a request (a dotted path so the API need not import it).
RUN_REQUEST_JOB = "executor.jobs.run_request"


def route_for_handler(handler_id: str) -> tuple[str, str]:
    """(resource, queue) for a handler: each resource has its own queue, so a saturated
    resource never holds up requests for another. Unknown handlers go to the default queue,
    where the executor fails them as unknown_handler."""
    try:
        resource = get_handler(handler_id).resource
    except UnknownHandler:
        return "", settings.SVC_DEFAULT_QUEUE
    return resource, queue_name(resource)


def all_queue_names() -> list[str]:
    """Every queue requests can be routed to: one per resource of a registered handler or of
    the resource map, then the default queue."""
    resources = {h.resource for h in all_handlers().values()} | set(load_resource_map())
    return sorted(queue_name(r) for r in resources) + [settings.SVC_DEFAULT_QUEUE]


# The first job of the first non-empty queue, in one command (RQ's non-blocking dequeue
# sends an LPOP per queue, most of them to empty queues).
_POP_FIRST = """
for _, key in ipairs(KEYS) do
  local job_id = redis.call('LPOP', key)
  if job_id then return {key, job_id} end
end
return false
"""


class ExecutorQueue(Queue):
    """RQ's Queue with a non-blocking dequeue across queues in one round trip; the blocking one
    is RQ's own (a single BLPOP over every queue)."""

    @classmethod
    def lpop(cls, queue_keys, timeout, connection=None):
        if timeout is not None or len(queue_keys) < 2:
            return super().lpop(queue_keys, timeout, connection=connection)
        found = connection.register_script(_POP_FIRST)(keys=list(queue_keys))
        return tuple(found) if found else None


def get_queue(name: str | None = None) -> Queue:
    return ExecutorQueue(
        name or settings.SVC_DEFAULT_QUEUE, connection=redis_connection(), serializer=RQ_SERIALIZER
    )


def queue_position(*, queue: str, job_id: str) -> int | None:
    """The job's place among its queue's waiting jobs (0: the next one taken), or None when the
    queue does not hold it (running, scheduled for later, not enqueued yet, or gone). One LPOS:
    RQ pushes at the tail and pops at the head."""
    return redis_connection().lpos(f"{Queue.redis_queue_namespace_prefix}{queue}", job_id)


def queue_positions(*, queue: str, limit: int = 10_000) -> dict[str, int]:
    """Every waiting job's place in `queue`, for the first `limit` of them (one LRANGE): what
    one API process's live streams share instead of a look per stream."""
    key = f"{Queue.redis_queue_namespace_prefix}{queue}"
    ids = redis_connection().lrange(key, 0, limit - 1)
    return {(i.decode() if isinstance(i, bytes) else i): n for n, i in enumerate(ids)}


def job_timeout() -> int:
    """Seconds RQ lets a request's job run: SVC_JOB_TIMEOUT plus the backstop's margin."""
    return settings.SVC_JOB_TIMEOUT + defaults.JOB_TIMEOUT_MARGIN


def enqueue_request(*, request_id: str, queue: str, delay: float = 0) -> None:
    """One RQ job per request; the job id is the request id, so the job is never enqueued twice.

    `delay` (seconds) schedules it instead (RQ's scheduler runs in every executor).
    """
    options = dict(
        job_id=request_id,
        job_timeout=job_timeout(),
        result_ttl=defaults.RESULT_TTL,
        failure_ttl=defaults.FAILURE_TTL,
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
        overdue = time.time() - defaults.SCHEDULED_OVERDUE_GRACE
        for (job_id, key), at in zip(checks, found, strict=True):
            scheduled = key.startswith(_SCHEDULED_PREFIX)
            if at is not None and not (scheduled and at < overdue):
                alive.add(job_id)
    return alive


def enqueue_again(*, request_id: str, queue: str) -> None:
    """Enqueue a request's job now, taking it out of its queue's scheduled retries first (so a
    scheduler that wakes up later does not run it a second time)."""
    ScheduledJobRegistry(queue, connection=redis_connection(), serializer=RQ_SERIALIZER).remove(
        request_id
    )
    enqueue_request(request_id=request_id, queue=queue)


def next_scheduled_in(queue_names: list[str]) -> float | None:
    """Seconds until the earliest scheduled retry of these queues is due (<= 0: due now), or
    None when none is scheduled."""
    connection = redis_connection()
    with connection.pipeline(transaction=False) as pipe:
        for name in queue_names:
            pipe.zrange(ScheduledJobRegistry.key_template.format(name), 0, 0, withscores=True)
        firsts = [entries[0][1] for entries in pipe.execute() if entries]
    return min(firsts) - time.time() if firsts else None


def enqueue_due_scheduled(queue_names: list[str]) -> int:
    """Move the scheduled retries of these queues that are due into their queues, as RQ's
    scheduler does, without its lock: each job is taken out of the registry first and only the
    process whose removal succeeded enqueues it. Returns how many this process moved."""
    connection = redis_connection()
    moved = 0
    for name in queue_names:
        registry = ScheduledJobRegistry(name, connection=connection, serializer=RQ_SERIALIZER)
        for job_id in registry.get_jobs_to_schedule(int(time.time())):
            job_id = job_id.decode() if isinstance(job_id, bytes) else job_id
            if not connection.zrem(registry.key, job_id):
                continue  # another process (or RQ's scheduler) moved it
            try:
                job = Job.fetch(job_id, connection=connection, serializer=RQ_SERIALIZER)
            except NoSuchJobError:
                continue
            Queue(name, connection=connection, serializer=RQ_SERIALIZER)._enqueue_job(
                job, at_front=job.should_enqueue_at_front()
            )
            moved += 1
    return moved


_SCHEDULED_PREFIX = ScheduledJobRegistry.key_template.format("")
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
        Job.fetch(job_id, connection=redis_connection(), serializer=RQ_SERIALIZER).cancel()
    except (NoSuchJobError, InvalidJobOperation, redis.RedisError) as exc:
        logger.info("job %s not canceled in RQ: %s", job_id, type(exc).__name__)


def signal_stop_job(job_id: str) -> None:
    """Ask the executor running a job to stop it (RQ's stop-job command); best effort."""
    try:
        send_stop_job_command(redis_connection(), job_id)
    except (NoSuchJobError, InvalidJobOperation, redis.RedisError) as exc:
        logger.info("stop signal for job %s not sent: %s", job_id, type(exc).__name__)

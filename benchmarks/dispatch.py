"""Dispatch: no-op jobs per second, one executor process against RQ's own SimpleWorker.

Both drain a queue of the same no-op jobs on the same Redis, in burst mode, logging at the
same level. The rate is read from RQ's own records of the jobs: the jobs divided by the time
from the first job's start to the last job's end, so process start-up is not counted.

    python -m benchmarks.dispatch --queue NAME   # the SimpleWorker side (a child process)
"""

import argparse
import os
from datetime import datetime

import redis
from rq import Queue, SimpleWorker

from benchmarks.stack import Stack
from infra.stores import RQ_SERIALIZER

JOBS = 3000
# Jobs the executor keeps in flight (the settings' default EXECUTOR_CONCURRENCY).
EXECUTOR_CONCURRENCY = 64
# Seconds a worker gets to drain its queue before the scenario fails.
DRAIN_TIMEOUT = 180
NOOP_JOB = "benchmarks.dispatch.noop"


def noop() -> None:
    """The job: nothing, so only the worker's own cost is measured."""


def enqueue(connection: redis.Redis, queue_name: str) -> list[str]:
    queue = Queue(queue_name, connection=connection, serializer=RQ_SERIALIZER)
    jobs = queue.enqueue_many([Queue.prepare_data(NOOP_JOB, result_ttl=600) for _ in range(JOBS)])
    return [job.id for job in jobs]


def rate(connection: redis.Redis, job_ids: list[str]) -> dict:
    with connection.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(f"rq:job:{job_id}", "status", "started_at", "ended_at")
        rows = pipe.execute()
    finished = [row for row in rows if row[0] == b"finished"]
    if len(finished) != len(job_ids):
        raise RuntimeError(f"dispatch: {len(finished)} of {len(job_ids)} jobs finished")
    first = min(_time(row[1]) for row in finished)
    last = max(_time(row[2]) for row in finished)
    return {
        "jobs": len(job_ids),
        "seconds": round(last - first, 2),
        "jobs_per_second": round(len(job_ids) / (last - first), 1),
    }


def _time(raw: bytes) -> float:
    return datetime.fromisoformat(raw.decode().replace("Z", "+00:00")).timestamp()


def run(stack: Stack) -> dict:
    connection = redis.Redis.from_url(stack.redis.uri)
    try:
        simple_ids = enqueue(connection, "bench-dispatch-simple")
        _drain(
            stack, "simpleworker", ["-m", "benchmarks.dispatch", "--queue", "bench-dispatch-simple"]
        )
        executor_ids = enqueue(connection, "bench-dispatch-executor")
        _drain(
            stack,
            "dispatch-executor",
            [
                "manage.py",
                "runexecutor",
                "--queues",
                "bench-dispatch-executor",
                "--burst",
                "--concurrency",
                str(EXECUTOR_CONCURRENCY),
            ],
        )
        return {
            "simple_worker": rate(connection, simple_ids),
            "executor": {**rate(connection, executor_ids), "concurrency": EXECUTOR_CONCURRENCY},
        }
    finally:
        connection.close()


def _drain(stack: Stack, name: str, args: list[str]) -> None:
    child = stack.python(name, *args)
    try:
        code = child.wait(DRAIN_TIMEOUT)
    except Exception:
        stack.stop(child)
        raise RuntimeError(f"{name} did not drain its queue in {DRAIN_TIMEOUT}s") from None
    if code != 0:
        raise RuntimeError(f"{name} exited {code}:\n{stack.log_tail(name)}")


def main() -> None:
    parser = argparse.ArgumentParser(description="Drain a queue with RQ's SimpleWorker (burst).")
    parser.add_argument("--queue", required=True)
    args = parser.parse_args()
    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    worker = SimpleWorker(
        [Queue(args.queue, connection=connection, serializer=RQ_SERIALIZER)],
        connection=connection,
        serializer=RQ_SERIALIZER,  # as the executor: the same JSON jobs, the same cost
    )
    worker.work(burst=True, logging_level=os.environ.get("LOG_LEVEL", "INFO"))


if __name__ == "__main__":
    main()

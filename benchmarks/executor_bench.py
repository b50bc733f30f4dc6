"""Executor: 1,000 requests to an upstream answering after 2 s, one executor at concurrency 200.

The requests are accepted through the API before the executor starts; the clock runs from
the executor's start to the last request's `finished_at`, so the figure includes the start-up
of the process. The ideal is N × latency / C: every slot busy with an upstream call all along.
"""

import time

import pymongo
import redis

from benchmarks import load, measure
from benchmarks.stack import UPSTREAM_OFFER, Stack, listening, wait_until

REQUESTS = 1000
CONCURRENCY = 200
UPSTREAM_DELAY = 2.0
IDEAL_SECONDS = REQUESTS * UPSTREAM_DELAY / CONCURRENCY
# Clients that submit the requests through the API before the executor starts.
SUBMIT_CLIENTS = 32
# Seconds the executor gets to finish every request before the scenario fails.
RUN_TIMEOUT = 240
# Seconds between two looks at the executor's progress.
POLL_SECONDS = 0.1


def submit(stack: Stack, api_port: int) -> None:
    """Accept the requests through the API, each with its own inputs."""
    path = "/svc/{}/{}/".format(*UPSTREAM_OFFER)
    result = load.run(
        api_port,
        lambda i: load.post_json(path, {"n": f"exec-{i}"}, port=api_port, token=stack.token),
        requests=REQUESTS,
        clients=SUBMIT_CLIENTS,
    )
    if result.accepted() != REQUESTS:
        raise RuntimeError(f"submitting the executor's requests failed: {result.summary()}")


def run(stack: Stack, api_port: int, upstream_port: int) -> dict:
    upstream = stack.python(
        "upstream",
        "-m",
        "benchmarks.upstream",
        "--port",
        str(upstream_port),
        "--delay",
        str(UPSTREAM_DELAY),
    )
    wait_until(lambda: listening(upstream_port), timeout=30, what="the loopback upstream")
    submit(stack, api_port)
    mongo = pymongo.MongoClient(stack.mongo.uri, tz_aware=True)
    redis_client = redis.Redis.from_url(stack.redis.uri)
    requests = mongo.get_default_database()["requests"]
    queue = requests.find_one({"service": UPSTREAM_OFFER[0]}, {"queue": 1})["queue"]
    try:
        return _measure(stack, upstream, requests, redis_client, mongo, queue)
    finally:
        stack.stop(upstream)
        mongo.close()
        redis_client.close()


def _measure(stack: Stack, upstream, requests, redis_client, mongo, queue: str) -> dict:
    counter = measure.StoreCounter(mongo, redis_client).start()
    started_at = time.time()
    executor = stack.python(
        "executor", "manage.py", "runexecutor", "--concurrency", str(CONCURRENCY)
    )
    rss = measure.RssSampler(executor.pid)
    rss.start()
    cpu = measure.CpuMeter(
        {
            "executor": executor.pid,
            "mongo": stack.mongo.process.pid,
            "redis": stack.redis.process.pid,
            "upstream": upstream.pid,
        }
    ).start()
    done = _wait_for_jobs(stack, executor, redis_client, queue)
    elapsed = time.time() - started_at
    cpu.stop()
    peak_mb = measure.vm_hwm_mb(executor.pid)
    tree_peak_mb = rss.stop()
    counts = counter.stop()
    stack.stop(executor)
    statuses = _statuses(requests)
    if done != REQUESTS or statuses.get("succeeded") != REQUESTS:
        tail = stack.log_tail("executor")
        raise RuntimeError(f"executor scenario: statuses {statuses}; executor log:\n{tail}")
    first_start, last_finish, busy = _span(requests)
    wall = last_finish - started_at
    return {
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "upstream_delay_s": UPSTREAM_DELAY,
        "wall_s": round(wall, 2),
        "ideal_s": IDEAL_SECONDS,
        "startup_s": round(first_start - started_at, 2),
        "first_start_to_last_finish_s": round(last_finish - first_start, 2),
        # Requests running at once on average (start to finish): below the concurrency when
        # the executor cannot take jobs as fast as they end.
        "mean_in_flight": round(busy / (last_finish - first_start), 1),
        "mean_run_s": round(busy / REQUESTS, 2),
        "requests_per_second": round(REQUESTS / wall, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "tree_peak_rss_mb": tree_peak_mb,
        "cores_busy": cpu.cores(elapsed),
        "executor_cpu_ms_per_request": round(cpu.seconds["executor"] / REQUESTS * 1000, 2),
        "stores_per_request": counts.per_request(REQUESTS),
        "statuses": statuses,
    }


def _wait_for_jobs(stack: Stack, executor, redis_client: redis.Redis, queue: str) -> int:
    """Jobs ended (finished or failed), read from RQ's registries in Redis.

    Counting documents by status in SecantusDB costs a scan of the collection, which would
    load the server under test; RQ records a job as finished only after the job has written
    the request's final status, so its registries say when the documents are final.
    """
    deadline = time.monotonic() + RUN_TIMEOUT
    ended = 0
    while time.monotonic() < deadline:
        ended = redis_client.zcard(f"rq:finished:{queue}") + redis_client.zcard(
            f"rq:failed:{queue}"
        )
        if ended >= REQUESTS:
            return ended
        if executor.poll() is not None:
            raise RuntimeError(f"the executor exited:\n{stack.log_tail('executor')}")
        time.sleep(POLL_SECONDS)
    return ended


def _statuses(requests) -> dict[str, int]:
    pipeline = [
        {"$match": {"service": UPSTREAM_OFFER[0], "action": UPSTREAM_OFFER[1]}},
        {"$group": {"_id": "$status", "n": {"$sum": 1}}},
    ]
    return {row["_id"]: row["n"] for row in requests.aggregate(pipeline)}


def _span(requests) -> tuple[float, float, float]:
    """(first started_at, last finished_at, seconds run in all) of the scenario's requests."""
    query = {"service": UPSTREAM_OFFER[0], "action": UPSTREAM_OFFER[1]}
    times = list(requests.find(query, {"started_at": 1, "finished_at": 1}))
    first = min(doc["started_at"] for doc in times)
    last = max(doc["finished_at"] for doc in times)
    busy = sum((doc["finished_at"] - doc["started_at"]).total_seconds() for doc in times)
    return first.timestamp(), last.timestamp(), busy

"""Executor: 1,000 requests to an upstream answering after 2 s, one executor at concurrency 200.

The requests are accepted through the API before the executor starts; the clock runs from
the executor's start to the last request's `finished_at`, so the figure includes the start-up
of the process. The ideal is N × latency / C: every slot busy with an upstream call all along.

The helpers below (the upstream, the submission, the wait, the requests' own times) serve the
inflight scenario too (benchmarks/inflight.py).
"""

import time
from datetime import UTC, datetime

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


class Batch:
    """The requests one scenario submits to the upstream offer, told apart from those of the
    scenarios before it (same offer, same collection) by their creation time."""

    def __init__(self, stack: Stack, requests: int, tag: str):
        self.stack = stack
        self.requests = requests
        self.tag = tag
        self.since = datetime.now(UTC)
        self.query = {
            "service": UPSTREAM_OFFER[0],
            "action": UPSTREAM_OFFER[1],
            "created_at": {"$gte": self.since},
        }

    def submit(self, api_port: int) -> None:
        """Accept the requests through the API, each with its own inputs (no dedupe)."""
        path = "/svc/{}/{}/".format(*UPSTREAM_OFFER)
        token = self.stack.token
        result = load.run(
            api_port,
            lambda i: load.post_json(path, {"n": f"{self.tag}-{i}"}, port=api_port, token=token),
            requests=self.requests,
            clients=SUBMIT_CLIENTS,
        )
        if result.accepted() != self.requests:
            raise RuntimeError(f"submitting the {self.tag} requests failed: {result.summary()}")

    def queue(self, collection) -> str:
        return collection.find_one(self.query, {"queue": 1})["queue"]

    def statuses(self, collection) -> dict[str, int]:
        pipeline = [{"$match": self.query}, {"$group": {"_id": "$status", "n": {"$sum": 1}}}]
        return {row["_id"]: row["n"] for row in collection.aggregate(pipeline)}

    def documents(self, collection) -> list[dict]:
        fields = {"started_at": 1, "finished_at": 1, "results": 1}
        return list(collection.find(self.query, fields))


def start_upstream(stack: Stack, port: int, delay: float):
    upstream = stack.python(
        "upstream", "-m", "benchmarks.upstream", "--port", str(port), "--delay", str(delay)
    )
    wait_until(lambda: listening(port), timeout=30, what="the loopback upstream")
    return upstream


class JobWatch:
    """Jobs of a queue that ended (finished or failed) since the watch was made.

    Counting documents by status in SecantusDB costs a scan of the collection, which would
    load the server under test; RQ records a job as finished only after the job has written
    the request's final status, so its registries say when the documents are final. An
    earlier scenario's jobs stay in them for RESULT_TTL, so only their growth counts.
    """

    def __init__(self, redis_client: redis.Redis, queue: str):
        self.redis = redis_client
        self.queue = queue
        self.before = self._ended()
        # Redis commands `wait` sent: not the app's, so taken off its count.
        self.commands = 0

    def _ended(self) -> int:
        finished = self.redis.zcard(f"rq:finished:{self.queue}")
        return finished + self.redis.zcard(f"rq:failed:{self.queue}")

    def wait(self, stack: Stack, executor, jobs: int, timeout: float) -> int:
        """Wait until `jobs` jobs ended or `timeout` seconds passed; returns how many ended."""
        deadline = time.monotonic() + timeout
        ended = 0
        while time.monotonic() < deadline:
            ended = self._ended() - self.before
            self.commands += 2
            if ended >= jobs:
                return ended
            if executor.poll() is not None:
                raise RuntimeError(f"the executor exited:\n{stack.log_tail('executor')}")
            time.sleep(POLL_SECONDS)
        return ended


def run_times(documents: list[dict]) -> list[tuple[float, float]]:
    """(started_at, finished_at) of each request, in seconds since the epoch."""
    return [(d["started_at"].timestamp(), d["finished_at"].timestamp()) for d in documents]


def mean_in_flight_while_queued(times: list[tuple[float, float]]) -> float:
    """Requests running at once on average while work was still waiting: from the first start
    to the last start. After the last start the executor has nothing left to take, so the
    tail (slots emptying one by one) says nothing about how well it kept them full."""
    window_start = min(start for start, _ in times)
    window_end = max(start for start, _ in times)
    if window_end <= window_start:
        return float(len(times))
    overlap = sum(
        max(0.0, min(finish, window_end) - max(start, window_start)) for start, finish in times
    )
    return overlap / (window_end - window_start)


def peak_overlap(times: list[tuple[float, float]]) -> int:
    """Most requests running at the same moment (a sweep over their starts and ends)."""
    # At equal times an end sorts before a start: a request that ends as another starts
    # does not overlap it.
    events = sorted([(start, 1) for start, _ in times] + [(finish, -1) for _, finish in times])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def run(stack: Stack, api_port: int, upstream_port: int) -> dict:
    upstream = start_upstream(stack, upstream_port, UPSTREAM_DELAY)
    mongo = pymongo.MongoClient(stack.mongo.uri, tz_aware=True)
    redis_client = redis.Redis.from_url(stack.redis.uri)
    try:
        batch = Batch(stack, REQUESTS, "exec")
        # The intake's share of the lifecycle's Mongo writes, counted apart from the execution's.
        intake_counter = measure.StoreCounter(mongo, redis_client).start()
        batch.submit(api_port)
        intake_counts = intake_counter.stop()
        return _measure(stack, batch, upstream, mongo, redis_client, intake_counts)
    finally:
        stack.stop(upstream)
        mongo.close()
        redis_client.close()


def _measure(stack: Stack, batch: Batch, upstream, mongo, redis_client, intake_counts) -> dict:
    requests = mongo.get_default_database()["requests"]
    queue = batch.queue(requests)
    watch = JobWatch(redis_client, queue)
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
    done = watch.wait(stack, executor, REQUESTS, RUN_TIMEOUT)
    elapsed = time.time() - started_at
    cpu.stop()
    peak_mb = measure.vm_hwm_mb(executor.pid)
    tree_peak_mb = rss.stop()
    counts = counter.stop(own_redis_commands=watch.commands)
    stack.stop(executor)
    statuses = batch.statuses(requests)
    if done != REQUESTS or statuses.get("succeeded") != REQUESTS:
        tail = stack.log_tail("executor")
        raise RuntimeError(f"executor scenario: statuses {statuses}; executor log:\n{tail}")
    times = run_times(batch.documents(requests))
    first_start = min(start for start, _ in times)
    last_finish = max(finish for _, finish in times)
    busy = sum(finish - start for start, finish in times)
    wall = last_finish - started_at
    return {
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "upstream_delay_s": UPSTREAM_DELAY,
        "wall_s": round(wall, 2),
        "ideal_s": IDEAL_SECONDS,
        "startup_s": round(first_start - started_at, 2),
        "first_start_to_last_finish_s": round(last_finish - first_start, 2),
        # Requests running at once on average, over the whole span (diluted by the tail) and
        # while work was queued: below the concurrency when the executor cannot take jobs as
        # fast as they end.
        "mean_in_flight": round(busy / (last_finish - first_start), 1),
        "mean_in_flight_while_queued": round(mean_in_flight_while_queued(times), 1),
        "mean_run_s": round(busy / REQUESTS, 2),
        "requests_per_second": round(REQUESTS / wall, 1),
        "peak_rss_mb": round(peak_mb, 1),
        "tree_peak_rss_mb": tree_peak_mb,
        "cores_busy": cpu.cores(elapsed),
        "executor_cpu_ms_per_request": round(cpu.seconds["executor"] / REQUESTS * 1000, 2),
        "stores_per_request": counts.per_request(REQUESTS),
        "intake_stores_per_request": intake_counts.per_request(REQUESTS),
        "statuses": statuses,
    }

"""Inflight: 1,000 requests to an upstream answering after 30 s, one executor at concurrency 1000.

Every request should be in its upstream call at the same time: with the calls this long,
taking the jobs one by one costs nothing, so what shows is whatever holds fewer than 1,000
calls open at once (a pool, a connection limit) and what 1,000 of them cost in memory.
Two counts of "at once": the requests' own `started_at`/`finished_at` (what the executor
recorded), and the upstream's (what really reached it; a call waiting for a connection of a
pool is running by the first count, not by the second).

The http.post handler's read timeout (30 s) equals the upstream's delay, so the scenario
uploads a `service_map` config raising it, as an operator serving such an upstream would.
"""

import textwrap
import time

import pymongo
import redis

from benchmarks import executor_bench, measure
from benchmarks.stack import RESOURCE_MAP, UPSTREAM_TIMEOUT, Stack

REQUESTS = 1000
CONCURRENCY = 1000
UPSTREAM_DELAY = 30.0
# Seconds the executor gets to finish every request: the delay twice over (calls held back
# by a pool end a delay late) and the start-up and dispatch of 1,000 jobs on a loaded machine.
RUN_TIMEOUT = 300
SERVICE_MAP = f"""\
resource_map:
{textwrap.indent(RESOURCE_MAP, "  ")}
handlers:
  http.post:
    timeouts: {{read: {UPSTREAM_TIMEOUT}}}
"""


def run(stack: Stack, api_port: int, upstream_port: int) -> dict:
    service_map = stack.tmp / "service_map.yaml"
    service_map.write_text(SERVICE_MAP)
    stack.manage("config", "upload", str(service_map), "--name", "service_map")
    upstream = executor_bench.start_upstream(stack, upstream_port, UPSTREAM_DELAY)
    mongo = pymongo.MongoClient(stack.mongo.uri, tz_aware=True)
    redis_client = redis.Redis.from_url(stack.redis.uri)
    try:
        batch = executor_bench.Batch(stack, REQUESTS, "inflight")
        batch.submit(api_port)
        return _measure(stack, batch, upstream, mongo, redis_client)
    finally:
        stack.stop(upstream)
        mongo.close()
        redis_client.close()


def _measure(stack: Stack, batch, upstream, mongo, redis_client) -> dict:
    requests = mongo.get_default_database()["requests"]
    watch = executor_bench.JobWatch(redis_client, batch.queue(requests))
    started_at = time.time()
    executor = stack.python(
        "executor", "manage.py", "runexecutor", "--concurrency", str(CONCURRENCY)
    )
    cpu = measure.CpuMeter({"executor": executor.pid, "upstream": upstream.pid}).start()
    done = watch.wait(stack, executor, REQUESTS, RUN_TIMEOUT)
    elapsed = time.time() - started_at
    cpu.stop()
    peak_mb = measure.vm_hwm_mb(executor.pid)
    stack.stop(executor)
    statuses = batch.statuses(requests)
    documents = batch.documents(requests)
    result = {
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "upstream_delay_s": UPSTREAM_DELAY,
        "ended": done,
        "succeeded": statuses.get("succeeded", 0),
        "statuses": statuses,
        "peak_rss_mb": round(peak_mb, 1),
        "cores_busy": cpu.cores(elapsed),
        "upstream_peak_in_flight": _upstream_peak(documents),
    }
    ran = [d for d in documents if d.get("started_at") and d.get("finished_at")]
    times = executor_bench.run_times(ran)
    if times:
        first_start = min(start for start, _ in times)
        last_finish = max(finish for _, finish in times)
        result |= {
            "wall_s": round(last_finish - started_at, 2),
            "startup_s": round(first_start - started_at, 2),
            "last_start_s": round(max(start for start, _ in times) - started_at, 2),
            "peak_overlap": executor_bench.peak_overlap(times),
        }
    return result


def _upstream_peak(documents: list[dict]) -> int:
    """The most calls the upstream held at once, as its answers (the requests' results) say."""
    peaks = [
        result.get("peak", 0)
        for doc in documents
        for result in doc.get("results") or []
        if isinstance(result, dict)
    ]
    return max(peaks, default=0)

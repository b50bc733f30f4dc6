"""Waiting: 1,000 clients hold an SSE stream each (`GET /svc/request/<id>/events/`) on ONE API
process (gunicorn, one uvicorn worker) while their requests are queued, then an executor runs
the requests and every stream must carry its request's end.

What it shows: what 1,000 waiting clients cost that process (resident memory, and CPU while
nothing happens: keep-alives, the queue-position looks), what delivering their events costs
(CPU per request ended), and how late each end reaches its client: from the request's
`finished_at` to the event's arrival (the executor's own write of the end included), and from
the event's publishing (its stream id, Redis's clock) to its arrival, on one machine's clock.
The load generator, parsing 1,000 streams in one Python process, shares the 2 cores; its CPU is
reported beside.
"""

import asyncio
import contextlib
import json
import time

import httpx
import pymongo

from benchmarks import executor_bench, measure
from benchmarks.stack import Stack, wait_until

CLIENTS = 1000
UPSTREAM_DELAY = 0.5
EXECUTOR_CONCURRENCY = 200
QUIET_SECONDS = 10.0  # the window in which the waiting costs are read (nothing ends)
OPEN_TIMEOUT = 120
END_TIMEOUT = 300
WAIT_PORT_WORKERS = "1"


def run(stack: Stack, api_port: int, upstream_port: int, wait_port: int) -> dict:
    upstream = executor_bench.start_upstream(stack, upstream_port, UPSTREAM_DELAY)
    api = stack.gunicorn(wait_port, "--workers", WAIT_PORT_WORKERS, name="waiting-api")
    mongo = pymongo.MongoClient(stack.mongo.uri, tz_aware=True)
    try:
        wait_until(lambda: _healthy(wait_port), timeout=60, what="the waiting API")
        batch = executor_bench.Batch(stack, CLIENTS, "waiting")
        batch.submit(api_port)
        requests = mongo.get_default_database()["requests"]
        ids = [doc["_id"] for doc in requests.find(batch.query, {"_id": 1})]
        worker = _worker_pid(api.pid)
        result = asyncio.run(_measure(stack, wait_port, ids, worker, requests))
        if result["errors"]:
            result["api_log_tail"] = stack.log_tail("waiting-api", 4000)
        return result
    finally:
        stack.stop(api)
        stack.stop(upstream)
        mongo.close()


async def _measure(stack: Stack, port: int, ids: list[str], worker: int, requests) -> dict:
    opened = asyncio.Event()
    streams = [_Stream(request_id) for request_id in ids]
    limits = httpx.Limits(max_connections=len(ids) + 10, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {stack.token}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", headers=headers, limits=limits, timeout=None
    ) as client:
        tasks = [asyncio.ensure_future(s.follow(client, streams, opened)) for s in streams]
        started = time.monotonic()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(opened.wait(), OPEN_TIMEOUT)
        open_s = time.monotonic() - started
        # The quiet window: every client waits, nothing ends.
        quiet = measure.CpuMeter({"api": worker}).start()
        await asyncio.sleep(QUIET_SECONDS)
        quiet_cpu = quiet.stop()["api"]
        rss_waiting = measure.rss_mb(worker)
        delivering = measure.CpuMeter({"api": worker}).start()
        client_cpu, delivery_started = time.process_time(), time.monotonic()
        executor = stack.python(
            "executor", "manage.py", "runexecutor", "--concurrency", str(EXECUTOR_CONCURRENCY)
        )
        try:
            await asyncio.wait(tasks, timeout=END_TIMEOUT)
        finally:
            deliver_cpu = delivering.stop()["api"]
            client_cores = (time.process_time() - client_cpu) / (
                time.monotonic() - delivery_started
            )
            stack.stop(executor)
            for task in tasks:
                task.cancel()
    finished = {
        doc["_id"]: doc["finished_at"].timestamp()
        for doc in requests.find({"_id": {"$in": ids}}, {"finished_at": 1})
        if doc.get("finished_at")
    }
    lags = sorted(
        (s.ended_at - finished[s.request_id]) * 1000
        for s in streams
        if s.ended_at is not None and s.request_id in finished
    )
    # From the event's publishing (its stream id) to its arrival: the delivery alone, without
    # the executor's own write of the end, which a loaded MongoDB makes slow.
    delivery = sorted(
        (s.ended_at - s.published_at) * 1000
        for s in streams
        if s.ended_at is not None and s.published_at is not None
    )
    answered = sum(1 for s in streams if s.ended_at is not None)
    return {
        "clients": len(ids),
        "opened": sum(1 for s in streams if s.first_at is not None),
        "open_s": round(open_s, 2),
        "answered": answered,
        "errors": sum(1 for s in streams if s.error),
        "first_error": next((s.error for s in streams if s.error), None),
        "api_rss_waiting_mb": round(rss_waiting, 1),
        "api_peak_rss_mb": round(measure.vm_hwm_mb(worker), 1),
        "api_cores_waiting": round(quiet_cpu / QUIET_SECONDS, 3),
        "api_cpu_ms_per_answer": round(deliver_cpu * 1000 / max(answered, 1), 2),
        # The load generator's own share of the 2 cores while the ends are delivered: a lag
        # may be its reading of 1,000 streams as much as the API's sending.
        "client_cores_delivering": round(client_cores, 2),
        "end_lag_ms_p50": round(measure.percentile(lags, 0.50), 1) if lags else None,
        "end_lag_ms_p99": round(measure.percentile(lags, 0.99), 1) if lags else None,
        "end_lag_ms_max": round(lags[-1], 1) if lags else None,
        "delivery_ms_p50": round(measure.percentile(delivery, 0.50), 1) if delivery else None,
        "delivery_ms_p99": round(measure.percentile(delivery, 0.99), 1) if delivery else None,
    }


class _Stream:
    def __init__(self, request_id: str):
        self.request_id = request_id
        self.first_at: float | None = None
        self.ended_at: float | None = None
        self.error: str | None = None
        self.published_at: float | None = None  # the end event's stream id: Redis's clock

    async def follow(self, client: httpx.AsyncClient, streams, opened: asyncio.Event) -> None:
        try:
            async with client.stream("GET", f"/svc/request/{self.request_id}/events/") as answer:
                if answer.status_code != 200:
                    self.error = f"HTTP {answer.status_code}"
                    return
                event_id = None
                async for line in answer.aiter_lines():
                    if line.startswith("id: "):
                        event_id = line[4:]
                    if not line.startswith("data: "):
                        continue
                    status = json.loads(line[6:])["status"]
                    if self.first_at is None:
                        self.first_at = time.time()
                        if all(s.first_at is not None or s.error for s in streams):
                            opened.set()
                    if status in ("succeeded", "failed", "canceled", "expired"):
                        self.ended_at = time.time()
                        if event_id:
                            self.published_at = int(event_id.split("-")[0]) / 1000
                        return
        except (httpx.HTTPError, OSError) as exc:
            self.error = type(exc).__name__
        finally:
            if self.first_at is None and all(s.first_at is not None or s.error for s in streams):
                opened.set()


def _worker_pid(master: int) -> int:
    """The one uvicorn worker of the gunicorn master (the process that holds the streams)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = [p for p in measure.tree(master) if p.pid != master]
        if children:
            return children[0].pid
        time.sleep(0.1)
    raise RuntimeError("the waiting API has no worker")


def _healthy(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False

"""Many jobs in flight per executor process, proven by overlap rather than by timing."""

import asyncio
import threading
import time
from pathlib import Path

import pytest
from rq.job import Job
from rq.registry import ScheduledJobRegistry, StartedJobRegistry

from api.documents import ServiceRequest
from executor import defaults
from executor.handlers import HandlerCall, handler
from executor.resources import queue_name
from infra.stores import RQ_SERIALIZER, redis_connection
from tests.helpers import run_concurrent_worker, submit

# Jobs run in executor threads or processes with their own SQL connections: the test's data
# must be committed, not held in the test's transaction.
pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parents[2]
# Seconds a barrier waits before declaring that the jobs did not overlap.
BARRIER_TIMEOUT = 30
N = 20

sync_barrier = threading.Barrier(N, timeout=BARRIER_TIMEOUT)
async_barrier: dict[str, asyncio.Barrier] = {}
release_sync = threading.Event()
async_done = []


@handler
def meet_sync(call: HandlerCall) -> int:
    return sync_barrier.wait()


@handler
async def meet_async(call: HandlerCall) -> str:
    barrier = async_barrier.setdefault("b", asyncio.Barrier(N))
    async with asyncio.timeout(BARRIER_TIMEOUT):
        await barrier.wait()
    return "met"


@handler
def block_until_released(call: HandlerCall) -> str:
    assert release_sync.wait(BARRIER_TIMEOUT), "the async calls never finished"
    return "released"


@handler
async def quick_async(call: HandlerCall) -> str:
    await asyncio.sleep(0.01)
    async_done.append(call.request_id)
    if len(async_done) == 4:
        release_sync.set()
    return "quick"


def statuses() -> dict[str, int]:
    counts: dict[str, int] = {}
    for request in ServiceRequest.objects.only("status"):
        counts[request.status] = counts.get(request.status, 0) + 1
    return counts


@pytest.mark.parametrize(
    "handler_id", ["test_concurrency.meet_sync", "test_concurrency.meet_async"]
)
def test_it_runs_concurrency_jobs_at_once(alice_api, make_offer, handler_id):
    """N handlers wait on a barrier of N: a serial executor would break the barrier."""
    sync_barrier.reset()
    async_barrier.clear()
    make_offer(service="t", action="meet", handler=handler_id)
    for i in range(N):
        submit(alice_api, "/svc/t/meet/", {"x": i})
    run_concurrent_worker(N)
    assert statuses() == {"succeeded": N}


def test_a_blocking_sync_handler_does_not_stall_async_ones(alice_api, make_offer):
    release_sync.clear()
    async_done.clear()
    make_offer(service="t", action="block", handler="test_concurrency.block_until_released")
    make_offer(service="t", action="quick", handler="test_concurrency.quick_async")
    submit(alice_api, "/svc/t/block/", {"x": 0})
    for i in range(4):
        submit(alice_api, "/svc/t/quick/", {"x": i})
    run_concurrent_worker(5)
    assert statuses() == {"succeeded": 5}


def test_it_never_holds_more_jobs_than_its_concurrency(alice_api, make_offer):
    make_offer(service="t", action="slowish", params={"delay_seconds": 0.05})
    for i in range(30):
        submit(alice_api, "/svc/t/slowish/", {"x": i})
    peak = []
    registry = StartedJobRegistry(queue_name("local"), connection=redis_connection())
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            peak.append(registry.count)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        run_concurrent_worker(4)
    finally:
        stop.set()
        watcher.join()
    assert statuses() == {"succeeded": 30}
    assert 1 <= max(peak) <= 4


def _spy_on_rq_bookkeeping(monkeypatch) -> tuple[list, list]:
    """(heartbeats, states) that reach RQ's own methods: (direct?, timeout) and (state, piped?)."""
    from rq.worker.base import BaseWorker

    beats, states = [], []
    heartbeat, set_state = BaseWorker.heartbeat, BaseWorker.set_state

    def spy_heartbeat(self, timeout=None, pipeline=None):
        beats.append((pipeline is None, timeout))
        return heartbeat(self, timeout, pipeline)

    def spy_set_state(self, state, pipeline=None):
        states.append((state, pipeline is not None))
        return set_state(self, state, pipeline)

    monkeypatch.setattr(BaseWorker, "heartbeat", spy_heartbeat)
    monkeypatch.setattr(BaseWorker, "set_state", spy_set_state)
    return beats, states


def test_the_worker_beats_and_records_its_state_per_period_not_per_job(
    alice_api, make_offer, monkeypatch
):
    """RQ beats the worker's key before and after every dequeue, again in each job's pipeline
    (stretched to the job's timeout), and says idle, then busy, for every job: built for one
    job at a time. The executor beats its key once per period (its successes' counters in the
    same pipeline) and writes its state when it changes."""
    make_offer(service="t", action="echo")
    jobs = 40
    for i in range(jobs):
        submit(alice_api, "/svc/t/echo/", {"x": i})
    beats, states = _spy_on_rq_bookkeeping(monkeypatch)
    run_concurrent_worker(10)

    assert statuses() == {"succeeded": jobs}
    periodic = [1 for _, timeout in beats if timeout is None]
    assert 1 <= len(periodic) <= 3, beats  # birth, death, maybe a period; RQ: three per job
    assert not [timeout for _, timeout in beats if timeout is not None], beats  # none per job
    direct_states = [state for state, piped in states if not piped]
    assert len(direct_states) <= 6, direct_states  # RQ alone: two per job
    assert all(a != b for a, b in zip(direct_states, direct_states[1:], strict=False)), (
        direct_states
    )


def test_a_busy_worker_keeps_beating(alice_api, make_offer, monkeypatch):
    """With every slot taken by a slow job the worker still beats, once per period."""

    monkeypatch.setattr(defaults, "HEARTBEAT_EVERY_SECONDS", 0.3)
    monkeypatch.setattr(defaults, "SLOT_WAIT_SECONDS", 0.1)
    make_offer(service="t", action="slow", params={"delay_seconds": 2})
    for i in range(2):
        submit(alice_api, "/svc/t/slow/", {"x": i})
    beats, _ = _spy_on_rq_bookkeeping(monkeypatch)
    run_concurrent_worker(1)

    assert statuses() == {"succeeded": 2}
    periodic = [1 for _, timeout in beats if timeout is None]
    assert 6 <= len(periodic) <= 20, beats  # ~4 s busy at one beat per 0.3 s


def test_a_burst_executor_runs_the_retries_its_saturated_requests_scheduled(
    alice_api, make_offer, settings, tmp_path, monkeypatch
):
    """One slot, two requests: the second finds the resource saturated, gives its executor
    slot back and is scheduled for a retry. RQ's burst mode exits at the first empty look and
    leaves it queued for good; the executor's burst drains the retries it scheduled."""
    resource_map = tmp_path / "resource_map.yaml"
    resource_map.write_text("resources:\n  local: {max_concurrency: 1}\n")
    settings.SVC_RESOURCE_MAP = str(resource_map)
    monkeypatch.setattr(defaults, "SATURATED_WAIT_IN_PROCESS", 0.05)
    make_offer(service="t", action="busy", params={"delay_seconds": 0.5})
    for i in range(2):
        submit(alice_api, "/svc/t/busy/", {"x": i})

    run_concurrent_worker(2)

    assert statuses() == {"succeeded": 2}
    retries = [
        Job.fetch(r.id, connection=redis_connection(), serializer=RQ_SERIALIZER).number_of_retries
        for r in ServiceRequest.objects
    ]
    assert sorted(n or 0 for n in retries) == [0, 1]  # the second one waited for a retry
    assert ScheduledJobRegistry(queue_name("local"), connection=redis_connection()).count == 0


def test_the_worker_counts_its_successes_for_dashboards(alice_api, make_offer):
    """The successes' counters travel with the periodic beat, and the last ones at death."""
    from executor.queues import all_queue_names, get_queue
    from executor.worker import ConcurrentWorker

    make_offer(service="t", action="echo")
    for i in range(7):
        submit(alice_api, "/svc/t/echo/", {"x": i})
    worker = ConcurrentWorker(
        [get_queue(q) for q in all_queue_names()], connection=redis_connection(), concurrency=3
    )
    worker.work(burst=True, with_scheduler=False)

    assert statuses() == {"succeeded": 7}
    record = redis_connection().hgetall(worker.key)
    assert int(record[b"successful_job_count"]) == 7
    assert float(record[b"total_working_time"]) > 0

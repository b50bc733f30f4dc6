"""Real executor processes: signals and hand-back, two executors sharing queues, a circuit
breaker shared across processes, and resource limits held by several processes."""

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import asdict

import pytest
from django.conf import settings
from rq import Worker

from api.documents import ServiceRequest
from api.models import Account, LedgerEntry
from executor import breaker, resources
from executor.resources import Resource, snapshot
from infra.stores import redis_connection
from tests import resource_probe
from tests.executor.test_concurrency import N, statuses
from tests.executor.test_resilience import MAIN_KEY, post_offer, stored, upload_service_map
from tests.executor.test_resources import DEADLINE, ROOT, take, wait_for_grant
from tests.helpers import executor_process, queued_job_ids, run_concurrent_worker, submit
from tests.live import wait_until

# Jobs run in executor processes with their own SQL connections: the test's data must be
# committed, not held in the test's transaction.
pytestmark = pytest.mark.django_db(transaction=True)


def finish(process: subprocess.Popen, timeout: float = 60) -> str:
    """The executor's output once it stopped; an error it logged fails the test (a job that
    broke after its request's status was written would otherwise pass unseen)."""
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"executor did not stop:\n{output[-3000:]}")
    errors = [line for line in output.splitlines() if '"level": "ERROR"' in line]
    assert errors == [], errors[:3]
    return output


def test_sigterm_hands_back_unfinished_jobs_and_loses_none(alice_api, make_offer):
    make_offer(service="t", action="slow", params={"delay_seconds": 60})
    ids = [submit(alice_api, "/svc/t/slow/", {"x": i})["id"] for i in range(N)]
    process = executor_process("--concurrency", str(N), "--shutdown-grace", "0.5")
    wait_until(lambda: statuses().get("running") == N, what="20 running requests")
    process.send_signal(signal.SIGTERM)
    output = finish(process)
    assert process.returncode == 0, output
    assert statuses() == {"queued": N}, output
    assert sorted(queued_job_ids()) == sorted(ids)
    # The requests run to success once an executor picks them up again (no delay this time).
    ServiceRequest.objects.update(set__params={})
    run_concurrent_worker(N)
    assert statuses() == {"succeeded": N}
    assert {r.attempts for r in ServiceRequest.objects} == {2}


def test_sigterm_lets_in_flight_jobs_finish_within_the_grace(alice_api, make_offer):
    make_offer(service="t", action="short", params={"delay_seconds": 2})
    for i in range(N):
        submit(alice_api, "/svc/t/short/", {"x": i})
    process = executor_process("--concurrency", str(N), "--shutdown-grace", "60")
    wait_until(lambda: statuses().get("running") == N, what="20 running requests")
    process.send_signal(signal.SIGTERM)
    output = finish(process)
    assert process.returncode == 0, output
    assert statuses() == {"succeeded": N}, output


def running_on() -> set[str]:
    """The executors that run requests now (by the worker name on each running request)."""
    return {r.worker for r in ServiceRequest.objects(status="running").only("worker")} - {None, ""}


def test_two_executors_never_run_the_same_request_twice(alice_api, make_offer, json_stub):
    """Two burst executors of 50 against the `http` resource's 64 slots: the second one finds
    the resource saturated, waits and may schedule retries, which it runs before it exits
    (tests/executor/test_concurrency.py proves that case alone). The upstream holds its
    answers until both executors have calls in flight, so both take part however fast the
    first one starts."""
    make_offer(service="t", action="post", handler="http.post", params={"url": json_stub.url})
    ids = {submit(alice_api, "/svc/t/post/", {"x": i})["id"] for i in range(200)}
    json_stub.hold()
    processes = [executor_process("--concurrency", "50", "--burst") for _ in range(2)]
    try:
        wait_until(lambda: len(running_on()) == 2, timeout=90, what="calls from both executors")
    finally:
        json_stub.release()
    outputs = [finish(p, timeout=120) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    errors = [r.error for r in ServiceRequest.objects(status__ne="succeeded")]
    assert statuses() == {"succeeded": 200}, errors
    called = [r.json["request_id"] for r in json_stub.requests]
    assert sorted(called) == sorted(ids)  # every request exactly once
    # Both took part: each ran some of the requests, by the name on each request and its log.
    ran = Counter(r.worker for r in ServiceRequest.objects.only("worker"))
    assert len(ran) == 2 and sum(ran.values()) == 200, ran
    logged = sorted(out.count("request succeeded") for out in outputs)
    assert logged == sorted(ran.values()), (ran, logged)
    # … and each was charged exactly once.
    charged = LedgerEntry.objects.filter(kind="capture", request_id__in=ids)
    assert sorted(charged.values_list("request_id", flat=True)) == sorted(ids)
    assert Account.objects.get(user=alice_api.user).held == 0


def stop(process: subprocess.Popen) -> str:
    os.killpg(process.pid, signal.SIGTERM)
    try:
        return process.communicate(timeout=60)[0]
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        return process.communicate()[0]


@pytest.mark.django_db(transaction=True)
def test_the_breaker_is_shared_by_executor_processes_and_closes_after_a_trial(
    tmp_path, alice_api, make_offer, flaky_stub, fresh_fernet_key, settings
):
    """Threshold 3, two executors of concurrency 1: per-process breakers would let 6 calls
    through; the shared one lets 3, plus at most the one the other process had in flight."""
    settings.SVC_RESOURCE_MAP = ""
    cooldown = 8
    upload_service_map(tmp_path, threshold=3, cooldown=cooldown)
    post_offer(make_offer, flaky_stub.url, max_retries=0)
    flaky_stub.fail_always(503)
    flaky_stub.script(delay=0.3)  # calls overlap, so both processes take part
    processes = [executor_process("--concurrency", "1"), executor_process("--concurrency", "1")]
    try:
        wait_until(lambda: Worker.count(connection=redis_connection()) == 2, what="2 executors")
        ids = [submit(alice_api, "/svc/text/post/", {"x": i})["id"] for i in range(10)]
        wait_until(
            lambda: ServiceRequest.objects(status="failed").count() == 10, what="10 failures"
        )
        requests = [stored(i) for i in ids]
        called = [r for r in requests if r.error["code"] == "upstream_error"]
        assert 3 <= flaky_stub.hits <= 4 and len(called) == flaky_stub.hits
        assert len({r.worker for r in called}) == 2  # both processes counted failures
        assert all(r.error["code"] == "upstream_unavailable" for r in requests if r not in called)
        state = breaker.snapshot(resources.get_resource("http"))
        assert state["state"] == "open" and state["opens"] == 1

        # The upstream recovers; after the cool-down one request is the trial and closes it.
        flaky_stub.recover()
        flaky_stub.script(delay=0)
        hits = flaky_stub.hits
        wait_until(
            lambda: breaker.wait_while_open(resources.get_resource("http")) == 0,
            timeout=cooldown + 30,
            what="the cool-down",
        )
        trial = submit(alice_api, "/svc/text/post/", {"x": "trial"})["id"]
        wait_until(lambda: stored(trial).status == "succeeded", what="the trial")
        assert flaky_stub.hits == hits + 1
        assert breaker.snapshot(resources.get_resource("http"))["state"] == "closed"
        after = [submit(alice_api, "/svc/text/post/", {"x": f"after{i}"})["id"] for i in range(3)]
        wait_until(
            lambda: all(stored(i).status == "succeeded" for i in after),
            what="3 more to succeed",
            describe=lambda: [(stored(i).status, stored(i).error) for i in after],
        )
    finally:
        outputs = [stop(p) for p in processes]
    assert all(MAIN_KEY not in out for out in outputs)
    assert not [line for out in outputs for line in out.splitlines() if '"level": "ERROR"' in line]


@pytest.fixture
def probes():
    started: list[subprocess.Popen] = []

    def start(*args: str) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "tests.resource_probe", *args],
            cwd=ROOT,
            env={**os.environ, "REDIS_URL": settings.REDIS_URL},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_two_processes_never_hold_more_slots_than_max_concurrency(probes):
    resource = Resource("gpu", max_concurrency=5)
    hammers = [probes("hammer", json.dumps(asdict(resource)), "500", "8") for _ in range(2)]
    outputs = [hammer.communicate(timeout=DEADLINE)[0] for hammer in hammers]
    assert [hammer.returncode for hammer in hammers] == [0, 0], outputs
    connection = redis_connection()
    assert int(connection.get(resource_probe.COMPLETED)) == 1000
    # 16 holders contending for 5 slots: the peak reaches the limit and never passes it.
    assert int(connection.get(resource_probe.PEAK)) == 5
    assert int(connection.get(resource_probe.HOLDING)) == 0
    assert snapshot(resource)["inflight"] == 0


def test_a_killed_holders_slot_comes_back_after_its_lease_ttl(probes):
    resource = Resource("gpu", max_concurrency=1, lease_ttl=1.0)
    holder = probes("hold", json.dumps(asdict(resource)))
    line = holder.stdout.readline()
    assert line.startswith("held "), line + holder.stdout.read()
    assert take(resource).reason == "saturated"  # the live holder keeps renewing its lease
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    grant = wait_for_grant(resource)
    assert grant.lease_id != line.split()[1]

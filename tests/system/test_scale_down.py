"""A Kubernetes scale-down as an executor sees it (deploy/k8s: KEDA removes a pod): SIGTERM,
no new job taken, in-flight calls get EXECUTOR_SHUTDOWN_GRACE, the rest go back to the front
of their queues, the process exits — well inside terminationGracePeriodSeconds — and the
executor that stays runs them. Nothing is lost, nothing is charged twice."""

import os
import signal
import sys
import time

import pytest

from tests.live import ROOT, wait_until
from tests.system.test_live import assert_ledger_balances

pytestmark = pytest.mark.system

GRACE = 1  # EXECUTOR_SHUTDOWN_GRACE of the pod that goes (seconds)
CALLS = 6  # text/wait: 600 s each (tests/live.py), far past the grace


def test_a_scaled_down_executor_hands_its_calls_to_the_one_that_stays(stack):
    live = stack()
    live.start_api(workers=1, threads=4)
    alice = live.client("alice", credits=1000)
    manage = [sys.executable, str(ROOT / "manage.py")]
    going = live._spawn(
        [*manage, "runexecutor", "--concurrency", "8", "--shutdown-grace", str(GRACE)],
        env={**live.env, "EXECUTOR_SHUTDOWN_GRACE": str(GRACE)},
    )
    ids = [
        alice.post("/svc/text/wait/", json={"text": f"long {i}"}).json()["id"] for i in range(CALLS)
    ]

    def statuses() -> list[str]:
        return [alice.get(f"/svc/request/{i}/").json()["status"] for i in ids]

    wait_until(lambda: statuses() == ["running"] * CALLS, what="the calls to run on the pod")
    started = time.monotonic()
    os.killpg(going.pid, signal.SIGTERM)  # what the kubelet sends after preStop
    going.wait(60)
    took = time.monotonic() - started
    assert going.returncode == 0
    assert took < GRACE + 15, took  # far inside terminationGracePeriodSeconds (360 s)
    handed = [alice.get(f"/svc/request/{i}/").json() for i in ids]
    assert {r["status"] for r in handed} == {"queued"}, handed  # back at the front, not lost
    # The executor that stays runs them; the long calls end when the client cancels them.
    live.start_executor("--concurrency", "8")
    wait_until(lambda: statuses() == ["running"] * CALLS, what="the other executor to run them")
    for request_id in ids:
        alice.post(f"/svc/request/{request_id}/cancel/")
    wait_until(lambda: set(statuses()) == {"canceled"}, what="the calls to end")
    wait_until(lambda: alice.get("/svc/account/").json()["held"] == 0, what="holds released")
    assert [alice.get(f"/svc/request/{i}/").json()["attempts"] for i in ids] == [2] * CALLS
    assert alice.get("/svc/account/").json()["balance"] == 1000  # canceled: nothing charged
    assert_ledger_balances(live)

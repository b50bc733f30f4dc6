"""Recon against real processes: an API killed between its MongoDB write and its enqueue, and a
poison request that takes its executor down on every run."""

import contextlib
import os
import signal
import threading
from collections import Counter

import httpx
import pytest

from api.documents import ServiceRequest
from tests.live import LiveStack, wait_until
from tests.stubs import crash
from tests.stubs.redis_proxy import StallingRedisProxy
from tests.system.test_live import assert_ledger_balances, ledger


@pytest.fixture
def live(tmp_path):
    stack = LiveStack(f"sqlite:///{tmp_path / 'live.sqlite3'}", tmp_path)
    yield stack
    stack.stop()


def test_an_api_killed_between_its_mongodb_write_and_its_enqueue_loses_nothing(live):
    """The API's enqueue never reaches Redis (a proxy holds every write of an RQ job) and the
    API is killed -9 right then: MongoDB holds the request and the ledger its hold, RQ has no
    job. Recon enqueues it, an executor runs it, and it is charged once."""
    live.env.update(SVC_RECON_QUEUED_GRACE="1")
    live.prepare()
    redis_url = live.env["REDIS_URL"]
    proxy = StallingRedisProxy(int(redis_url.rsplit(":", 1)[1].split("/")[0]), stall=b"rq:job:")
    try:
        live.env["REDIS_URL"] = proxy.uri  # the API alone goes through the proxy
        live.start_api(workers=1, threads=4)
        alice = live.client("alice", credits=10)
        sent = threading.Thread(
            target=lambda: _post_ignoring_errors(alice, "/svc/text/greet/", {"name": "Ada"}),
            daemon=True,
        )
        sent.start()
        assert proxy.stalled.wait(30), "the API never tried to enqueue"
        api = live.processes[0]
        os.killpg(api.pid, signal.SIGKILL)  # mid-enqueue: no 503, no failure recorded
        api.wait()
    finally:
        proxy.close()
    [orphan] = ServiceRequest.objects(user_id__exists=True)
    assert orphan.status == "queued" and orphan.attempts == 0
    entries, _ = ledger(live)
    assert [e["kind"] for e in entries if e["request_id"] == orphan.id] == ["hold"]

    live.env["REDIS_URL"] = redis_url
    live.start_executor("--concurrency", "4")
    live.start_recon("--interval", "1")
    wait_until(
        lambda: ServiceRequest.objects.get(id=orphan.id).status == "succeeded",
        what="recon to enqueue the orphan and the executor to run it",
    )
    done = ServiceRequest.objects.get(id=orphan.id)
    assert done.results == ["Hello Ada"] and done.attempts == 1
    assert any("job was missing" in e.get("note", "") for e in done.events)
    wait_until(
        lambda: (
            [e["kind"] for e in ledger(live)[0] if e["request_id"] == orphan.id]
            == ["hold", "capture"]
        ),
        what="the capture",
    )
    assert_ledger_balances(live)


def _post_ignoring_errors(client: httpx.Client, path: str, body: dict) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the API dies under it: that is the point
        client.post(path, json=body)


POISON_CATALOG = """
handlers:
  - {id: crash.exit, credits: 0}
offers:
  - {service: text, action: poison, price: 7, prompt_template: "{text}", handler: crash.exit}
"""


def test_a_poison_request_stops_after_max_attempts_and_the_queue_goes_on(live, tmp_path):
    """`crash.exit` ends its executor on every run. A supervisor restarts the executor each
    time; recon retries the request while attempts remain, then fails it `abandoned` and
    releases its hold; the queue then serves the next requests."""
    live.env.update(
        SVC_HANDLER_MODULES="tests.stubs.crash",
        SVC_MAX_ATTEMPTS="2",
        SVC_EXECUTOR_DEAD_AFTER="4",
        SVC_RECON_QUEUED_GRACE="2",  # a retried request waits this long since its intake
    )
    live.prepare()
    (tmp_path / "poison.yaml").write_text(POISON_CATALOG)
    live.manage("catalog", "import", str(tmp_path / "poison.yaml"))
    live.start_api(workers=1, threads=4)
    alice = live.client("alice", credits=100)
    poison = alice.post("/svc/text/poison/", json={"text": "boom"})
    assert poison.status_code == 202, poison.text
    poison_id = poison.json()["id"]
    live.start_recon("--interval", "1")

    crashes = Counter()

    def supervised() -> bool:
        """Restart the executor whenever it died, as systemd or Kubernetes would."""
        executors = [p for p in live.processes if "runexecutor" in p.args]
        if not executors or executors[-1].poll() is not None:
            if executors:
                crashes[executors[-1].returncode] += 1
            live.start_executor("--concurrency", "4")
        return ServiceRequest.objects.get(id=poison_id).status == "failed"

    wait_until(supervised, timeout=120, what="the poison request to be abandoned")
    ended = ServiceRequest.objects.get(id=poison_id)
    assert ended.error["code"] == "abandoned" and ended.attempts == 2
    assert crashes == {crash.EXIT_STATUS: 2}
    notes = [e.get("note", "") for e in ended.events]
    assert sum(n.startswith("recon: executor") and n.endswith("lost") for n in notes) == 1
    healthy = [
        alice.post("/svc/text/greet/", json={"name": f"n{i}"}).json()["id"] for i in range(5)
    ]
    wait_until(
        lambda: ServiceRequest.objects(id__in=healthy, status="succeeded").count() == 5,
        what="the requests beside it to succeed",
    )
    wait_until(lambda: alice.get("/svc/account/").json()["held"] == 0, what="the settlements")
    assert alice.get("/svc/account/").json()["balance"] == 100 - 5 * 3  # the poison: released
    assert_ledger_balances(live)

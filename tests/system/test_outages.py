"""Store outages: a stopped MongoDB server, a Redis killed (real processes); a job RQ failed and
an executor whose Redis is gone (in-process)."""

import json
import time

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from api.documents import ServiceRequest
from api.models import Account, LedgerEntry
from api.services.requests import request_start
from executor import breaker, resources
from executor.queues import RUN_REQUEST_JOB, get_queue
from executor.worker import ConcurrentWorker
from infra import embedded
from infra.stores import redis_connection
from recon import sweeps
from tests.helpers import run_worker, submit
from tests.live import LiveStack, wait_until
from tests.recon.test_recon import lose_job

GREET = "/svc/text/greet/"


@pytest.fixture
def mongo_dir(tmp_path):
    return tmp_path / "outage-mongo"


@pytest.fixture
def own_mongo(mongo_dir):
    """A SecantusDB of this test's own, so stopping it leaves the session's server alone."""
    servers = [embedded.start_mongo(mongo_dir, db="svc_outage")]
    yield servers  # the test appends the restarted server
    for server in servers:
        server.stop()


@pytest.fixture
def live(tmp_path, own_mongo):
    stack = LiveStack(f"sqlite:///{tmp_path / 'live.sqlite3'}", tmp_path)
    stack.env["MONGO_URI"] = own_mongo[0].uri
    stack.prepare()
    yield stack
    stack.stop()


def balance(live: LiveStack, username: str) -> tuple[int, int]:
    """(balance, held) from the SQL database, without the API (nor MongoDB)."""
    dump = json.loads(live.manage("dumpdata", "auth.User", "api.Account"))
    user = next(
        r["pk"] for r in dump if r["model"] == "auth.user" and r["fields"]["username"] == username
    )
    account = next(
        r["fields"] for r in dump if r["model"] == "api.account" and r["fields"]["user"] == user
    )
    return account["balance"], account["held"]


def test_a_stopped_mongodb_gets_a_quick_503_and_charges_nothing(live, own_mongo, mongo_dir):
    live.start_api()
    alice = live.client("alice", credits=10)
    live.start_executor("--concurrency", "2")
    server = own_mongo[0]
    server.stop()

    started = time.monotonic()
    response = alice.post(GREET, json={"name": "Ada"})
    elapsed = time.monotonic() - started
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "unavailable"
    assert elapsed < 10, f"the API took {elapsed:.1f}s to answer"
    assert alice.get("/svc/account/").json()["balance"] == 10  # the account reads SQL only
    assert balance(live, "alice") == (10, 0)

    port = int(server.uri.split(":")[2].split("/")[0])
    try:
        own_mongo.append(embedded.start_mongo(mongo_dir, port=port, db="svc_outage"))
    except RuntimeError as exc:
        pytest.skip(f"SecantusDB did not restart on the same port and data: {exc}")
    response = alice.post(GREET, json={"name": "Ada"})
    assert response.status_code == 202, response.text
    done = wait_until(
        lambda: (r := alice.get(response.json()["url"]).json())["status"] == "succeeded" and r,
        timeout=30,
        what="the request after the restart to succeed",
    )
    assert done["results"] == ["Hello Ada"]
    wait_until(lambda: balance(live, "alice") == (7, 0), timeout=30, what="the capture")


def test_a_request_whose_job_rq_failed_is_failed_and_released(alice, alice_api, greet_offer):
    created = submit(alice_api, GREET, {"name": "Ada", "place": "P"})
    lose_job(created["id"])
    request_start(request_id=created["id"], worker="w")
    queue = ServiceRequest.objects.get(id=created["id"]).queue
    # A job that crashes before the request's code runs (one argument too many), as a job
    # killed by an error outside the handler would: RQ moves it to its failed registry.
    get_queue(queue).enqueue(RUN_REQUEST_JOB, created["id"], "bogus", job_id=created["id"])
    run_worker(queue)
    assert created["id"] in get_queue(queue).failed_job_registry.get_job_ids()
    assert ServiceRequest.objects.get(id=created["id"]).status == "running"

    assert sweeps.sweep_failed_jobs() == {"job_failed": 1}
    assert sweeps.sweep_failed_jobs() == {}  # ended: nothing more to do
    done = ServiceRequest.objects.get(id=created["id"])
    assert done.status == "failed" and done.error["code"] == "job_failed"
    kinds = sorted(
        LedgerEntry.objects.filter(request_id=created["id"]).values_list("kind", flat=True)
    )
    assert kinds == ["hold", "release"]
    account = Account.objects.get(user=alice)
    assert (account.balance, account.held) == (1000, 0)


def test_a_redis_killed_under_load_loses_nothing_accepted(tmp_path):
    """kill -9 of Redis (AOF, fsync every second) while requests flow: the queue may lose
    its last writes; MongoDB keeps the requests, and recon enqueues what the queue lost."""
    redis_dir = tmp_path / "outage-redis"
    server = embedded.start_redis(redis_dir)
    port = int(server.uri.rsplit(":", 1)[1].split("/")[0])
    stack = LiveStack(f"sqlite:///{tmp_path / 'live.sqlite3'}", tmp_path)
    stack.env.update(REDIS_URL=server.uri, SVC_RECON_QUEUED_GRACE="2")
    restarted = None
    try:
        stack.prepare()
        stack.manage(
            "shell",
            "-c",
            "from api.models import ServiceOffer as O\n"
            "O.objects.filter(action='slow').update(params={'delay_seconds': 0.2})",
        )
        stack.start_api()
        alice = stack.client("alice", credits=1000)
        stack.start_executor("--concurrency", "4")
        stack.start_recon("--interval", "1")
        accepted = []

        def send(n: int) -> None:
            try:
                response = alice.post("/svc/text/slow/", json={"text": f"r{n}"})
            except Exception:  # the API may not answer while Redis is down: not accepted
                return
            if response.status_code == 202:
                accepted.append(response.json()["id"])

        for n in range(40):
            send(n)
        wait_until(  # the executor is up and working
            lambda: ServiceRequest.objects(id__in=accepted, status="succeeded").count() >= 5,
            what="the first requests to succeed",
        )
        server.process.kill()  # SIGKILL: no final fsync
        server.process.wait()
        for n in range(40, 45):
            send(n)  # refused (503) while Redis is down: nothing accepted, nothing charged
        restarted = embedded.start_redis(redis_dir, port=port)
        for n in range(45, 80):
            send(n)
        assert len(accepted) >= 60
        wait_until(
            lambda: (
                ServiceRequest.objects(id__in=accepted, status="succeeded").count() == len(accepted)
            ),
            timeout=120,
            what="every accepted request to succeed after the Redis restart",
        )
        wait_until(lambda: alice.get("/svc/account/").json()["held"] == 0, what="the captures")
        assert alice.get("/svc/account/").json()["balance"] == 1000 - 2 * len(accepted)
    finally:
        stack.stop()
        for running in (server, restarted):
            if running is not None:
                running.stop()


def gone_redis() -> redis.Redis:
    """A client of a port where nothing listens, with no retries: every call is refused."""
    return redis.Redis(port=embedded.free_port(), retry=Retry(NoBackoff(), 0))


def test_a_request_in_flight_rides_out_redis_going_away(caplog):
    """Mid-request, Redis is only coordination: the breaker fails open (the upstream may be
    fine) and a lease that cannot be released expires by itself; neither fails the request."""
    gone = gone_redis()
    resource = resources.Resource("openai")
    gate = breaker.allow(resource, owner="job-1", trial_ttl=5, connection=gone)
    assert gate.allowed
    assert breaker.record(resource, outcome="failure", owner="job-1", connection=gone) == "closed"
    grant = resources.Grant("openai", "lease-1", slots=1, credits=0, period_key=None)
    resources.release(grant, refund=True, connection=gone)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "breaker unreadable" in messages and "lease not released" in messages


def test_an_executor_whose_redis_is_gone_keeps_its_loop_going():
    """Every Redis call of RQ's main loop outside the dequeue (which waits by itself) is ridden
    out: without that, the first refused connection ends `work()` and the executor exits."""
    worker = ConcurrentWorker(["svc-local"], connection=redis_connection(), concurrency=2)
    gone = gone_redis()
    worker.connection = gone
    for queue in worker.queues:
        queue.connection = gone
    worker.check_for_suspension(burst=False)
    worker.run_maintenance_tasks()
    worker.heartbeat()
    worker.set_state("idle")
    with pytest.raises(redis.ConnectionError):  # the fixture is real: Redis does refuse
        gone.ping()

"""Recon's sweeps in one process: each repair, its idempotence, and that it claims its work."""

import json
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from rq.job import Job
from rq.registry import ScheduledJobRegistry

from api.documents import ServiceRequest
from api.models import Account, LedgerEntry
from api.services.requests import now, request_start
from executor import defaults as executor_defaults
from executor import liveness
from executor.queues import get_queue
from infra.stores import RQ_SERIALIZER, redis_connection
from recon import defaults, sweeps
from tests.api.test_deals import make_deal
from tests.helpers import queued_job_ids, run_worker, submit

GREET = "/svc/text/greet/"


def account(user) -> tuple[int, int]:
    row = Account.objects.get(user=user)
    return row.balance, row.held


def kinds(request_id: str) -> list[str]:
    return sorted(LedgerEntry.objects.filter(request_id=request_id).values_list("kind", flat=True))


def age(request_id: str, seconds: float, *fields: str) -> None:
    """Move the request's timestamps into the past, as if it had waited that long."""
    doc = ServiceRequest.objects.get(id=request_id)
    changes = {f"set__{f}": getattr(doc, f) - timedelta(seconds=seconds) for f in fields}
    ServiceRequest.objects(id=request_id).update_one(**changes)


def lose_job(request_id: str) -> None:
    """What a crash between the Mongo write and the enqueue (or a Redis restart) leaves."""
    for name in ("svc-local", "svc-default"):
        get_queue(name).remove(request_id)
    redis_connection().delete(f"rq:job:{request_id}")


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch, settings):
    settings.SVC_RECON_QUEUED_GRACE = 0
    settings.SVC_RECON_HOLD_GRACE = 0
    monkeypatch.setattr(defaults, "RETRY_BACKOFF_BASE", 0)  # re-runs now: no scheduler here


def test_a_queued_request_whose_job_is_lost_is_enqueued_again(alice, alice_api, greet_offer):
    created = submit(alice_api, GREET, {"name": "Ada", "place": "P"})
    lose_job(created["id"])
    assert queued_job_ids() == []
    assert sweeps.sweep() == {"job_missing": 1}
    assert sweeps.sweep() == {}  # the job exists now: nothing to do
    run_worker()
    done = ServiceRequest.objects.get(id=created["id"])
    assert done.status == "succeeded" and done.attempts == 1
    assert any("job was missing" in e.get("note", "") for e in done.events)
    assert kinds(created["id"]) == ["capture", "hold"] and account(alice) == (997, 0)


def test_two_recons_repair_a_lost_job_once(alice_api, greet_offer):
    created = submit(alice_api, GREET, {"name": "Ada", "place": "P"})
    lose_job(created["id"])
    barrier = threading.Barrier(4)
    results = []

    def one():
        barrier.wait()
        results.append(sweeps.sweep_queued())

    threads = [threading.Thread(target=one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r["job_missing"] for r in results) == 1
    assert queued_job_ids() == [created["id"]]


def test_a_job_popped_from_its_queue_but_never_started_is_enqueued_again(alice_api, greet_offer):
    """Its hash still says `queued` (Redis lost the executor's next write, or the executor lost
    Redis right after the pop): no queue lists it, so it is missing."""
    created = submit(alice_api, GREET, {"name": "Ada", "place": "P"})
    get_queue("svc-local").pop_job_id()
    assert queued_job_ids() == []
    assert redis_connection().hget(f"rq:job:{created['id']}", "status") == b"queued"
    assert sweeps.sweep_queued() == {"job_missing": 1}
    assert queued_job_ids() == [created["id"]]
    run_worker()
    assert ServiceRequest.objects.get(id=created["id"]).status == "succeeded"


def started_in_rq(request_id: str, worker: str, seconds_ago: float) -> None:
    """What an executor leaves once it took the job, before the request itself starts."""
    get_queue("svc-local").remove(request_id)
    at = now() - timedelta(seconds=seconds_ago)
    redis_connection().hset(
        f"rq:job:{request_id}",
        mapping={
            "status": "started",
            "worker_name": worker,
            "started_at": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        },
    )


@pytest.mark.parametrize(
    ("beating", "seconds_ago", "repaired"),
    [
        (True, 1, {}),  # in the executor's hands (waiting for a resource slot, say)
        (True, 120, {"job_missing": 1}),  # started long ago, request never began: dropped
        (False, 1, {"job_missing": 1}),  # its executor is gone
    ],
)
def test_a_job_started_in_rq_counts_while_its_executor_beats_and_it_is_recent(
    alice_api, greet_offer, settings, beating, seconds_ago, repaired
):
    settings.SVC_RECON_QUEUED_GRACE = 30
    created = submit(alice_api, GREET, {"name": "Ada", "place": "P"})
    age(created["id"], 60, "created_at")
    if beating:
        liveness.beat(redis_connection(), "exec-1")
    started_in_rq(created["id"], "exec-1", seconds_ago)
    assert sweeps.sweep_queued() == repaired
    assert (queued_job_ids() == [created["id"]]) == bool(repaired)


def test_a_request_whose_executor_died_runs_again_and_is_charged_once(
    alice, alice_api, greet_offer
):
    created = submit(alice_api, GREET, {"name": "Ada", "place": "P"})
    lose_job(created["id"])  # the dead executor had taken it
    request_start(request_id=created["id"], worker="ghost")
    age(created["id"], 60, "started_at")
    assert sweeps.sweep() == {"executor_lost": 1}
    requeued = ServiceRequest.objects.get(id=created["id"])
    assert requeued.status == "queued" and "ghost lost" in requeued.events[-1]["note"]
    assert sweeps.sweep() == {}  # claimed a moment ago: left to the claimant for CLAIM_SECONDS
    ServiceRequest.objects(id=created["id"]).update_one(unset__recon_at=True)  # time passes
    assert sweeps.sweep() == {"retried": 1}
    run_worker()
    done = ServiceRequest.objects.get(id=created["id"])
    assert done.status == "succeeded" and done.attempts == 2
    assert kinds(created["id"]) == ["capture", "hold"] and account(alice) == (997, 0)


def test_a_live_executor_keeps_its_running_requests(alice_api, greet_offer):
    created = submit(alice_api, GREET, {"name": "Ada", "place": "P"})
    liveness.beat(redis_connection(), "busy-but-alive")
    request_start(request_id=created["id"], worker="busy-but-alive")
    age(created["id"], 60, "started_at")
    assert sweeps.sweep_running() == {}
    assert ServiceRequest.objects.get(id=created["id"]).status == "running"


@override_settings(SVC_MAX_ATTEMPTS=2)
def test_a_request_that_keeps_losing_its_executor_is_abandoned(alice, alice_api, greet_offer):
    created = submit(alice_api, GREET, {"name": "Ada", "place": "P"})
    for _ in range(2):
        lose_job(created["id"])
        request_start(request_id=created["id"], worker="ghost")
        age(created["id"], 60, "started_at")
        ServiceRequest.objects(id=created["id"]).update_one(unset__recon_at=True)
        repaired = sweeps.sweep_running()
    assert repaired == {"abandoned": 1}
    done = ServiceRequest.objects.get(id=created["id"])
    assert done.status == "failed" and done.error["code"] == "abandoned"
    assert kinds(created["id"]) == ["hold", "release"] and account(alice) == (1000, 0)


def test_a_hold_left_by_a_crash_after_the_status_write_is_settled(alice, alice_api, greet_offer):
    created = submit(alice_api, GREET, {"name": "Ada", "place": "P"})
    ServiceRequest.objects(id=created["id"]).update_one(set__status="succeeded")
    assert sweeps.sweep_holds() == {"hold_settled": 1}
    assert sweeps.sweep_holds() == {}
    assert kinds(created["id"]) == ["capture", "hold"] and account(alice) == (997, 0)


def test_a_hold_whose_request_is_gone_is_released(alice, alice_api, greet_offer):
    created = submit(alice_api, GREET, {"name": "Ada", "place": "P"})
    ServiceRequest.objects(id=created["id"]).delete()
    assert sweeps.sweep_holds() == {"hold_orphaned": 1}
    assert account(alice) == (1000, 0)


def test_a_queued_request_past_its_expiration_expires(alice, alice_api, make_offer):
    make_offer("text", "brief", prompt_template="{x}", price=2, expiration=60)
    created = submit(alice_api, "/svc/text/brief/", {"x": 1})
    lose_job(created["id"])
    age(created["id"], 120, "created_at", "expires_at")
    assert sweeps.sweep() == {"expired": 1}
    done = ServiceRequest.objects.get(id=created["id"])
    assert done.status == "expired" and done.results == []
    assert account(alice) == (1000, 0)


def test_a_deal_whose_intake_stopped_half_way_fails_and_is_released(alice, alice_api, make_offer):
    greet = make_offer("text", "greet", prompt_template="Hello {name}", price=3)
    make_deal("solo", [(greet, "")])
    created = alice_api.post("/svc/deal/solo/", {"inputs": {"name": "A"}}, format="json").json()
    ServiceRequest.objects(parent=created["id"]).delete()  # a crash before the children
    assert sweeps.sweep_queued() == {"deal_incomplete": 1}
    parent = ServiceRequest.objects.get(id=created["id"])
    assert parent.status == "failed" and parent.error["code"] == "intake_incomplete"
    assert account(alice) == (1000, 0)


def test_results_past_their_expiration_are_purged_and_the_charge_stands(
    alice, alice_api, make_offer
):
    make_offer("text", "brief", prompt_template="{x}", price=2, expiration=60)
    created = submit(alice_api, "/svc/text/brief/", {"x": 1})
    run_worker()
    assert sweeps.sweep_expired() == {}  # not yet past
    age(created["id"], 120, "expires_at")
    assert sweeps.sweep_expired() == {"results_purged": 1}
    assert sweeps.sweep_expired() == {}
    done = ServiceRequest.objects.get(id=created["id"])
    assert done.status == "expired" and done.results == [] and done.inputs == {"x": 1}
    assert done.finished_at is not None and "purged" in done.events[-1]["note"]
    assert kinds(created["id"]) == ["capture", "hold"] and account(alice) == (998, 0)


def schedule(request_id: str, due_seconds_from_now: float) -> None:
    """Turn the request's queued job into a scheduled retry, as a saturated resource does."""
    queue = get_queue("svc-local")
    job = Job.fetch(request_id, connection=redis_connection(), serializer=RQ_SERIALIZER)
    queue.remove(request_id)
    queue.schedule_job(job, datetime.now(UTC) + timedelta(seconds=due_seconds_from_now))


def test_a_scheduled_retry_no_scheduler_moves_is_enqueued_again(alice, alice_api, greet_offer):
    """A retry scheduled in a queue no executor's scheduler serves (none runs, or the one that
    held the lock died) is live while it is due soon, and recon's to run once long overdue."""
    created = submit(alice_api, GREET, {"name": "Ada", "place": "P"})
    schedule(created["id"], due_seconds_from_now=5)
    assert sweeps.sweep_queued() == {}  # not yet due: its scheduler may still move it
    schedule(created["id"], due_seconds_from_now=-(executor_defaults.SCHEDULED_OVERDUE_GRACE + 5))
    assert queued_job_ids() == []

    assert sweeps.sweep_queued() == {"job_missing": 1}

    assert queued_job_ids() == [created["id"]]
    registry = ScheduledJobRegistry("svc-local", connection=redis_connection())
    assert registry.get_job_ids() == []  # taken out: no late scheduler runs it a second time
    run_worker()
    assert ServiceRequest.objects.get(id=created["id"]).status == "succeeded"
    assert kinds(created["id"]) == ["capture", "hold"] and account(alice) == (997, 0)


def test_a_streamed_gateway_call_lost_after_relaying_ends_charged_what_was_relayed(
    alice, alice_api, make_offer
):
    """Run again, its client would get the same chunks twice: it ends `interrupted`, charged
    the output its chunk stream says was relayed (and the input as counted)."""
    from api import events
    from api.chat import charge_for

    make_offer(
        service="chat",
        action="lost",
        handler="openai.chat",
        model_name="lost-1",
        price=5,
        price_per_1k_input=100,
        price_per_1k_output=1000,
        params={"model": "m", "base_url": "http://127.0.0.1:9/v1", "max_tokens": 10},
    )
    messages = [{"role": "user", "content": "hi"}]
    created = alice_api.post(
        "/v1/chat/completions",
        {"model": "lost-1", "messages": messages, "stream": True},
        format="json",
    )
    assert created.status_code == 202, created.content
    created = created.json()
    lose_job(created["id"])
    request_start(request_id=created["id"], worker="ghost")
    chunk_stream = events.chunk_key(created["id"])
    for content in ("", "a", " b", " c"):  # the role chunk carries no output
        chunk = {"choices": [{"index": 0, "delta": {"content": content}}]}
        redis_connection().xadd(chunk_stream, {"d": json.dumps(chunk)})
    age(created["id"], 60, "started_at")
    assert sweeps.sweep() == {"interrupted": 1}
    done = ServiceRequest.objects.get(id=created["id"])
    assert (done.status, done.error["code"]) == ("failed", "interrupted")
    assert done.usage["completion_tokens"] == 3 and done.usage["source"] == "relayed"
    expected, _ = charge_for(done.meter, done.usage, succeeded=False)
    assert done.charge == expected > 0
    assert LedgerEntry.objects.get(request_id=done.id, kind="capture").amount == expected
    assert account(alice) == (1000 - expected, 0)

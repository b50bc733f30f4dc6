"""The executor job: lifecycle transitions, results, failures, expiry, duplicate delivery."""

import asyncio
import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from api.documents import ServiceRequest
from executor import jobs
from executor.handlers import HandlerCall, HandlerError, handler
from tests.helpers import queued_job_ids, run_worker

calls: list[HandlerCall] = []


@handler
def boom(call: HandlerCall):
    raise RuntimeError("secret-token-123 leaked in an exception")


@handler
def record(call: HandlerCall):
    calls.append(call)
    return {"index": call.index, "thread": threading.current_thread().name}


@handler
async def refuse(call: HandlerCall):
    raise HandlerError("quota_exceeded", "upstream quota exceeded")


def submit(api, path, inputs):
    response = api.post(path, inputs, format="json")
    assert response.status_code == 202, response.content
    return response.json()


def test_it_runs_a_request_to_success_with_events_and_timestamps(alice_api, greet_offer):
    created = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "Paris"})
    run_worker()
    done = alice_api.get(created["url"]).json()
    assert done["status"] == "succeeded"
    assert done["results"] == ["Hello Ada from Paris"]
    assert done["attempts"] == 1 and done["error"] is None
    assert done["created_at"] <= done["started_at"] <= done["finished_at"]
    stored = ServiceRequest.objects.get(id=created["id"])
    assert [e["status"] for e in stored.events] == ["queued", "running", "succeeded"]


def test_it_produces_create_qty_results_in_order(alice_api, make_offer):
    calls.clear()
    make_offer(service="t", action="many", handler="test_executor.record", create_qty=4)
    created = submit(alice_api, "/svc/t/many/", {"x": "go"})
    run_worker()
    done = alice_api.get(created["url"]).json()
    assert done["status"] == "succeeded"
    assert [r["index"] for r in done["results"]] == [0, 1, 2, 3]
    assert {c.prompt for c in calls} == {"go"} and len(calls) == 4
    # Sync handlers run in the executor's thread pool, never on its event loop.
    assert all(r["thread"].startswith("sync-handler") for r in done["results"])


def test_a_handler_error_fails_the_request_with_its_code(alice_api, make_offer):
    make_offer(service="t", action="refuse", handler="test_executor.refuse")
    created = submit(alice_api, "/svc/t/refuse/", {"x": 1})
    run_worker()
    done = alice_api.get(created["url"]).json()
    assert done["status"] == "failed" and done["results"] == []
    assert done["error"] == {"code": "quota_exceeded", "message": "upstream quota exceeded"}


def test_local_fail_fails_the_request(alice_api, make_offer):
    make_offer(service="t", action="broken", handler="local.fail")
    created = submit(alice_api, "/svc/t/broken/", {"x": 1})
    run_worker()
    assert alice_api.get(created["url"]).json()["error"]["code"] == "handler_failed"


def test_a_crashing_handler_fails_without_leaking_its_exception(alice_api, make_offer):
    make_offer(service="t", action="boom", handler="test_executor.boom")
    created = submit(alice_api, "/svc/t/boom/", {"x": 1})
    run_worker()
    response = alice_api.get(created["url"])
    done = response.json()
    assert done["status"] == "failed"
    assert done["error"]["code"] == "handler_error"
    assert b"secret-token-123" not in response.content
    assert b"Traceback" not in response.content


def test_a_handler_removed_from_code_fails_the_request(alice_api, make_offer):
    make_offer(service="t", action="gone", handler="nowhere.gone")
    created = submit(alice_api, "/svc/t/gone/", {"x": 1})
    run_worker()
    assert alice_api.get(created["url"]).json()["error"]["code"] == "unknown_handler"


def test_a_request_runs_once_even_if_its_job_is_delivered_twice(alice_api, make_offer):
    calls.clear()
    make_offer(service="t", action="once", handler="test_executor.record")
    created = submit(alice_api, "/svc/t/once/", {"x": 1})
    run_worker()
    assert jobs.run_request(created["id"]) == "skipped"
    assert len(calls) == 1
    assert ServiceRequest.objects.get(id=created["id"]).attempts == 1


def test_a_request_past_its_expiry_ends_expired_without_running(alice_api, make_offer):
    calls.clear()
    make_offer(service="t", action="late", handler="test_executor.record", expiration=60)
    created = submit(alice_api, "/svc/t/late/", {"x": 1})
    stored = ServiceRequest.objects.get(id=created["id"])
    ServiceRequest.objects(id=stored.id).update_one(
        set__expires_at=stored.created_at - timedelta(seconds=1)
    )
    run_worker()
    done = alice_api.get(created["url"]).json()
    assert done["status"] == "expired" and done["error"]["code"] == "expired"
    assert calls == []


def test_a_catalog_edit_after_intake_does_not_change_a_queued_request(alice_api, greet_offer):
    created = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "Paris"})
    greet_offer.prompt_template = "Bye {name} from {place}"
    greet_offer.save()
    run_worker()
    assert alice_api.get(created["url"]).json()["results"] == ["Hello Ada from Paris"]


@pytest.mark.django_db(transaction=True)  # jobs run in executor threads with their own connections
def test_runexecutor_drains_its_queue_in_burst_mode(alice_api, greet_offer):
    created = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "Paris"})
    call_command("runexecutor", "--burst")
    assert alice_api.get(created["url"]).json()["status"] == "succeeded"
    assert queued_job_ids() == []


cancelled: list[int] = []


@handler
async def first_fails(call: HandlerCall):
    if call.index == 0:
        raise HandlerError("first_failed", "call 0 failed")
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:
        cancelled.append(call.index)
        raise


@handler
async def hangs(call: HandlerCall):
    await asyncio.sleep(60)


def test_one_failed_call_cancels_its_siblings(alice_api, make_offer):
    cancelled.clear()
    make_offer(service="t", action="ff", handler="test_executor.first_fails", create_qty=3)
    created = submit(alice_api, "/svc/t/ff/", {"x": 1})
    run_worker()
    assert alice_api.get(created["url"]).json()["error"]["code"] == "first_failed"
    assert sorted(cancelled) == [1, 2]


@override_settings(SVC_JOB_TIMEOUT=1)
def test_a_handler_past_the_job_timeout_fails_the_request(alice_api, make_offer):
    make_offer(service="t", action="hang", handler="test_executor.hangs")
    created = submit(alice_api, "/svc/t/hang/", {"x": 1})
    run_worker()
    done = alice_api.get(created["url"]).json()
    assert done["status"] == "failed" and done["error"]["code"] == "timeout"


def test_runexecutor_refuses_a_bad_resource_map(tmp_path, settings):
    bad = tmp_path / "map.yaml"
    bad.write_text("resources:\n  openai: {max_concurrency: -1}\n")
    settings.SVC_RESOURCE_MAP = str(bad)
    with pytest.raises(CommandError, match="openai"):
        call_command("runexecutor", "--burst")


def test_runexecutor_refuses_a_concurrency_below_one():
    with pytest.raises(CommandError, match="--concurrency"):
        call_command("runexecutor", "--burst", "--concurrency", "0")

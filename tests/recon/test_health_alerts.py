"""Recon's health snapshot, its gauges and /healthz detail; alerts to loopback webhooks."""

import logging
import threading
from datetime import timedelta

import pytest
from prometheus_client import REGISTRY
from rq import Worker

from api import health
from api.documents import STATUS_CREATED_INDEX, STATUS_FINISHED_INDEX, ServiceRequest
from api.health import BudgetUse, Health, QueueHealth
from api.services.requests import now
from executor import liveness, resources
from executor.queues import get_queue
from infra.embedded import free_port
from infra.stores import RQ_SERIALIZER, redis_connection
from recon import alerts, gauges
from recon.management.commands.recon import _watch
from tests.helpers import metrics_headers, submit
from tests.stubs.server import Answer, StubServer

GREET = "/svc/text/greet/"
INPUTS = {"name": "Ada", "place": "Paris"}


class Receiver(StubServer):
    """A webhook receiver: answers 204 like Discord, records every post."""

    def answer(self, request):
        return Answer(204, b"")

    def posts(self) -> list[dict]:
        return [r.json for r in self.requests]


@pytest.fixture
def discord():
    with Receiver() as server:
        yield server


@pytest.fixture
def generic():
    with Receiver() as server:
        yield server


@pytest.fixture
def webhooks(settings, discord, generic):
    # Tokens in the URLs, as real webhooks have them: they must never reach a log.
    settings.DISCORD_WEBHOOK_URL = f"{discord.url}/api/webhooks/1/discord-token"
    settings.SVC_ALERT_WEBHOOK_URL = f"{generic.url}/hook?token=generic-token"
    return discord, generic


def register_executor(name: str, queue: str, *, beating: bool) -> None:
    """An RQ worker record for `queue`; `beating` also makes it a live executor."""
    connection = redis_connection()
    Worker(
        [get_queue(queue)], name=name, connection=connection, serializer=RQ_SERIALIZER
    ).register_birth()
    if beating:
        liveness.beat(connection, name)


def finished(status: str, minutes_ago: float, n: int = 1) -> None:
    at = now() - timedelta(minutes=minutes_ago)
    for i in range(n):
        ServiceRequest(
            id=f"{status}-{minutes_ago}-{i}",
            dedupe_key="k",
            user_id=1,
            service="text",
            action="greet",
            status=status,
            created_at=at - timedelta(seconds=5),
            finished_at=at,
        ).save()


def a_health(**changes) -> Health:
    fields = dict(
        at=now(),
        queues={"svc-local": QueueHealth(depth=0, oldest_seconds=0.0, live_executors=1)},
        executors=frozenset({"exec-1"}),
        error_minutes=5,
        succeeded=0,
        failed=0,
        near_budget={},
    )
    return Health(**(fields | changes))


def stuck_queue() -> Health:
    return a_health(queues={"svc-local": QueueHealth(depth=3, oldest_seconds=61, live_executors=0)})


# --- health ---------------------------------------------------------------------------------


def test_a_queue_with_queued_requests_and_no_live_executor(alice_api, greet_offer):
    first = submit(alice_api, GREET, INPUTS)
    submit(alice_api, GREET, INPUTS | {"name": "Bo"})
    two_minutes_ago = now() - timedelta(seconds=120)
    ServiceRequest.objects(id=first["id"]).update_one(set__created_at=two_minutes_ago)
    register_executor("exec-dead", "svc-local", beating=False)  # kill -9'd: record, no beats
    register_executor("exec-1", "svc-default", beating=True)

    snap = health.snapshot()

    local = snap.queues["svc-local"]
    assert local.depth == 2 and local.live_executors == 0
    assert 120 <= local.oldest_seconds < 130
    assert snap.queues["svc-default"] == QueueHealth(0, 0.0, 1)
    assert snap.executors == {"exec-1"}


def test_the_error_rate_counts_only_requests_that_ended_in_the_window(settings, db):
    settings.SVC_HEALTH_ERROR_MINUTES = 5
    finished("failed", 1, n=3)
    finished("succeeded", 2)
    finished("failed", 60, n=5)  # before the window
    snap = health.snapshot()
    assert (snap.succeeded, snap.failed, snap.error_rate) == (1, 3, 0.75)


def test_a_resource_past_90_percent_of_its_budget_is_near_it(tmp_path, settings, db):
    path = tmp_path / "resources.yaml"
    path.write_text("resources:\n  paid: {budget: 10, period: hour}\n  free: {budget: 10}\n")
    settings.SVC_RESOURCE_MAP = str(path)
    paid, free = resources.get_resource("paid"), resources.get_resource("free")
    resources.acquire(paid, slots=1, credits=9, owner="t")
    resources.acquire(free, slots=1, credits=8, owner="t")
    assert health.snapshot().near_budget == {"paid": BudgetUse(9, 10, "hour")}


def test_export_sets_the_gauges(alice_api, greet_offer):
    submit(alice_api, GREET, INPUTS)
    register_executor("exec-1", "svc-default", beating=True)
    finished("failed", 1)
    finished("succeeded", 1, n=3)
    gauges.export(health.snapshot())
    assert REGISTRY.get_sample_value("svc_queue_depth", {"queue": "svc-local"}) == 1
    assert REGISTRY.get_sample_value("svc_queue_oldest_seconds", {"queue": "svc-local"}) < 5
    assert REGISTRY.get_sample_value("svc_executors_live") == 1
    assert REGISTRY.get_sample_value("svc_error_rate") == 0.25


def test_healthz_detail_shows_the_snapshot(anon_api, alice_api, greet_offer):
    submit(alice_api, GREET, INPUTS)
    response = anon_api.get("/healthz?detail=1", headers=metrics_headers())
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["checks"] == {"sql": "ok", "mongo": "ok", "redis": "ok"}
    detail = body["detail"]
    assert detail["queues"]["svc-local"]["depth"] == 1
    assert detail["queues"]["svc-local"]["oldest_seconds"] < 5
    assert (detail["executors_live"], detail["error_rate"]) == (0, 0.0)
    assert "detail" not in anon_api.get("/healthz").json()  # plain probes stay cheap


def test_healthz_detail_is_for_metrics_readers_only(anon_api, db):
    """Without the metrics token the answer is the plain health: still 200 for a load balancer
    configured with ?detail=1, but nothing about queues or executors."""
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = anon_api.get("/healthz?detail=1", headers=headers)
        assert response.status_code == 200
        assert set(response.json()) == {"status", "checks"}


def test_a_failing_healthz_detail_keeps_the_200(anon_api, db, monkeypatch):
    def broken():
        raise RuntimeError("boom")

    monkeypatch.setattr(health, "snapshot", broken)
    response = anon_api.get("/healthz?detail=1", headers=metrics_headers())
    assert response.status_code == 200
    assert response.json()["detail"] == {"error": "RuntimeError"}


# --- alert conditions -----------------------------------------------------------------------


def names(health_now: Health, repaired=None) -> list[str]:
    return [c.name for c in alerts.conditions(health_now, repaired or {})]


def test_each_condition_and_its_threshold(settings):
    settings.SVC_ALERT_STUCK_SECONDS = 300
    settings.SVC_ALERT_ERROR_RATE = 0.5
    assert names(a_health()) == []
    old = QueueHealth(depth=1, oldest_seconds=301, live_executors=1)
    assert names(a_health(queues={"svc-local": old})) == ["stuck_requests"]
    assert names(a_health(), {"abandoned": 2}) == ["stuck_requests"]
    assert names(a_health(), {"executor_lost": 2}) == []
    assert names(stuck_queue()) == ["no_executor:svc-local"]
    starting = QueueHealth(depth=3, oldest_seconds=59, live_executors=0)  # executors starting
    assert names(a_health(queues={"svc-local": starting})) == []
    assert names(a_health(near_budget={"paid": BudgetUse(9, 10, "hour")})) == ["budget:paid"]
    assert names(a_health(failed=6, succeeded=4)) == ["error_rate"]
    assert names(a_health(failed=5, succeeded=5)) == []  # not above the rate
    assert names(a_health(failed=9, succeeded=0)) == []  # too few to tell


# --- alert delivery -------------------------------------------------------------------------


def test_an_alert_fires_once_then_resolves_once_on_both_webhooks(webhooks, db):
    discord, generic = webhooks
    assert alerts.evaluate(stuck_queue(), {}) == [("no_executor:svc-local", "firing")]
    assert alerts.evaluate(stuck_queue(), {}) == []  # within SVC_ALERT_REPEAT_MINUTES
    assert alerts.evaluate(a_health(), {}) == [("no_executor:svc-local", "resolved")]
    assert alerts.evaluate(a_health(), {}) == []

    assert [set(p) for p in discord.posts()] == [{"content"}, {"content"}]
    assert "firing" in discord.posts()[0]["content"] and "3 jobs" in discord.posts()[0]["content"]
    assert "resolved" in discord.posts()[1]["content"]
    assert discord.requests[0].path == "/api/webhooks/1/discord-token"
    firing, resolved = generic.posts()
    assert set(firing) == {"alert", "state", "message", "at"}
    assert (firing["alert"], firing["state"]) == ("no_executor:svc-local", "firing")
    assert (resolved["alert"], resolved["state"]) == ("no_executor:svc-local", "resolved")


def test_recon_processes_evaluating_at_once_send_each_alert_once(webhooks, db):
    discord, generic = webhooks
    barrier = threading.Barrier(4)

    def one(snapshot):
        barrier.wait()
        alerts.evaluate(snapshot, {})

    for snapshot in (stuck_queue(), a_health()):
        threads = [threading.Thread(target=one, args=(snapshot,)) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert [p["state"] for p in generic.posts()] == ["firing", "resolved"]
    assert len(discord.posts()) == 2


def test_a_firing_alert_is_sent_again_after_the_repeat_interval(webhooks, db):
    _, generic = webhooks
    alerts.evaluate(stuck_queue(), {})
    redis_connection().delete(alerts.SENT_KEY_PREFIX + "no_executor:svc-local")  # TTL passed
    alerts.evaluate(stuck_queue(), {})
    assert [p["state"] for p in generic.posts()] == ["firing", "firing"]


def test_a_webhook_that_is_down_is_logged_without_its_token(settings, db, caplog):
    settings.DISCORD_WEBHOOK_URL = f"http://127.0.0.1:{free_port()}/api/webhooks/1/secret-token"
    settings.SVC_ALERT_WEBHOOK_URL = ""
    with caplog.at_level(logging.WARNING, logger="recon.alerts"):
        assert alerts.evaluate(stuck_queue(), {}) == []  # nobody got it
    failures = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
    assert failures == ["alert webhook at 127.0.0.1 failed: ConnectError"]
    assert "secret-token" not in caplog.text
    # Not marked as sent: the next loop tries again.
    assert not redis_connection().exists(alerts.SENT_KEY_PREFIX + "no_executor:svc-local")


def test_a_webhook_answering_500_is_logged(webhooks, db, caplog):
    discord, generic = webhooks
    discord.script(status=500)
    with caplog.at_level(logging.WARNING, logger="recon.alerts"):
        sent = alerts.evaluate(stuck_queue(), {})
    assert sent == [("no_executor:svc-local", "firing")]  # the generic webhook took it
    assert "failed: HTTPStatusError" in caplog.text and "discord-token" not in caplog.text
    assert len(generic.posts()) == 1


def test_the_recon_loop_survives_a_failing_snapshot(monkeypatch, caplog, db):
    def broken():
        raise RuntimeError("mongo down")

    monkeypatch.setattr(health, "snapshot", broken)
    with caplog.at_level(logging.ERROR, logger="recon"):
        _watch({})
    assert "recon health snapshot failed" in caplog.text


def test_the_snapshot_queries_never_read_the_history(alice_api, greet_offer):
    finished("succeeded", 60, n=2000)
    submit(alice_api, GREET, INPUTS)
    since = now() - timedelta(minutes=5)
    oldest = ServiceRequest.objects(status="queued", queue="svc-local", awaits_previous__ne=True)
    errors = ServiceRequest.objects(status="failed", finished_at__gte=since)
    for query in (
        oldest.order_by("status", "created_at").hint(STATUS_CREATED_INDEX).limit(1),
        errors.hint(STATUS_FINISHED_INDEX),
    ):
        stats = query.explain().get("executionStats", {})
        if "totalDocsExamined" not in stats:
            pytest.skip("this MongoDB server's explain does not report documents examined")
        assert stats["totalDocsExamined"] <= 1
    assert health.snapshot().queues["svc-local"].depth == 1

"""The webhook worker against a real loopback receiver: signed deliveries, retries with the same
webhook-id, 410, timeouts, rotation, refusal at send time, two workers, a crashed worker's
lease, shutdown, logs and metrics.

The worker's SQL runs in a thread of its own, so these tests commit (transactional db)."""

import logging
import signal
import socket
import threading
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from prometheus_client import REGISTRY
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.live import wait_until
from tests.stubs.server import Answer
from tests.webhooks.conftest import delivery_state, notify, wait_for_requests
from webhooks import defaults, metrics, services
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSettings
from webhooks.services import AttemptResult
from webhooks.worker import WebhookWorker

pytestmark = pytest.mark.django_db(transaction=True)


def once(concurrency: int = 4) -> int:
    return WebhookWorker(concurrency=concurrency, once=True).run()


def attempts_of(webhook_id: str) -> list[tuple]:
    return list(
        WebhookAttempt.objects.filter(delivery__webhook_id=webhook_id)
        .order_by("number")
        .values_list("number", "status_code")
    )


def webhook_id(request_id: str, event: str = "completed") -> str:
    return services.webhook_id_for(request_id=request_id, event=event)


def test_a_delivery_reaches_the_receiver_and_verifies(alice, receiver):
    secret = services.webhook_secret_rotate(user=alice)
    notify(alice, "r1", receiver.hook_url())

    assert once() == 1

    [received] = receiver.requests
    assert received.path == "/hooks/svc"
    payload = Webhook(secret).verify(received.body, received.headers)
    assert payload["type"] == "request.completed"
    assert payload["data"] == {"id": "r1", "status": "succeeded"}
    assert received.headers["webhook-id"] == webhook_id("r1")
    assert received.headers["Content-Type"] == "application/json"
    delivery = WebhookDelivery.objects.get()
    assert (delivery.state, delivery.attempts, delivery.last_status) == ("delivered", 1, 204)
    assert delivery.delivered_at is not None and delivery.claimed_until is None
    assert received.body.decode() == delivery.payload  # exactly what is kept
    [attempt] = WebhookAttempt.objects.all()
    assert (attempt.number, attempt.status_code, attempt.error) == (1, 204, "")


def test_a_receiver_failing_twice_gets_the_third_attempt_with_the_same_id(
    alice, receiver, fast_retries, run_worker
):
    secret = services.webhook_secret_rotate(user=alice)
    receiver.plan = [500, 503]
    notify(alice, "r1", receiver.hook_url())

    run_worker()
    wait_until(delivery_state(webhook_id("r1"), "delivered"), timeout=20, what="delivered")

    assert [r.headers["webhook-id"] for r in receiver.requests] == [webhook_id("r1")] * 3
    for received in receiver.requests:  # each attempt signed afresh, each verifies
        Webhook(secret).verify(received.body, received.headers)
    assert attempts_of(webhook_id("r1")) == [(1, 500), (2, 503), (3, 204)]
    excerpt = WebhookAttempt.objects.get(number=1).response_excerpt
    assert excerpt == '{"error": "planned"}'


def test_410_stops_the_retries(alice, receiver, fast_retries):
    receiver.plan = [410]
    notify(alice, "r1", receiver.hook_url())

    assert once() == 1

    delivery = WebhookDelivery.objects.get()
    assert (delivery.state, delivery.last_status, delivery.next_attempt_at) == (
        "stopped",
        410,
        None,
    )
    assert once() == 0 and len(receiver.requests) == 1


def test_a_receiver_that_never_answers_times_out_and_fails_after_the_schedule(
    alice, receiver, settings, run_worker
):
    settings.SVC_WEBHOOK_TIMEOUT = 0.5
    settings.SVC_WEBHOOK_RETRY_SCHEDULE = [0.1]
    receiver.hold()
    notify(alice, "r1", receiver.hook_url())

    run_worker()
    wait_until(delivery_state(webhook_id("r1"), "failed"), timeout=20, what="failed")

    attempts = WebhookAttempt.objects.order_by("number")
    assert [(a.number, a.status_code) for a in attempts] == [(1, None), (2, None)]
    assert all(a.error == "timeout: no answer in 0.5s" for a in attempts)
    assert all(400 <= a.latency_ms < 3000 for a in attempts)
    assert WebhookDelivery.objects.get().last_error.startswith("timeout")


def test_after_a_rotation_both_signatures_are_sent_then_only_the_new_one(alice, receiver):
    old = services.webhook_secret_rotate(user=alice)
    new = services.webhook_secret_rotate(user=alice)
    notify(alice, "r1", receiver.hook_url())
    once()

    first = receiver.requests[0]
    assert len(first.headers["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(first.body, first.headers)
    for signature in first.headers["webhook-signature"].split(" "):  # one per secret
        alone = {**first.headers, "webhook-signature": signature}
        verified = []
        for secret in (old, new):
            try:
                Webhook(secret).verify(first.body, alone)
                verified.append(secret)
            except WebhookVerificationError:
                pass
        assert len(verified) == 1

    WebhookSettings.objects.filter(user=alice).update(
        previous_until=timezone.now() - timedelta(seconds=1)
    )
    notify(alice, "r2", receiver.hook_url())
    once()

    second = receiver.requests[1]
    assert len(second.headers["webhook-signature"].split(" ")) == 1
    Webhook(new).verify(second.body, second.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(second.body, second.headers)


def test_a_name_that_now_resolves_privately_is_refused_without_a_connection(
    alice, receiver, settings, monkeypatch
):
    """DNS rebinding: the worker checks the address again and never connects to a refused one."""
    port = int(receiver.url.rsplit(":", 1)[1])
    notify(alice, "r1", f"http://rebind.test:{port}/in")
    settings.SVC_WEBHOOK_ALLOW_PRIVATE = False
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real("127.0.0.1" if host == "rebind.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    connects = []
    real_connect = socket.socket.connect
    monkeypatch.setattr(
        socket.socket, "connect", lambda s, a: connects.append(a) or real_connect(s, a)
    )

    once()

    [attempt] = WebhookAttempt.objects.all()
    assert attempt.status_code is None
    assert attempt.error.startswith("refused: ") and "https" in attempt.error
    assert receiver.requests == [] and connects == []
    assert WebhookDelivery.objects.get().state == "pending"  # retried later: DNS may change


def test_a_name_connects_to_its_checked_address_with_its_host_header(alice, receiver, monkeypatch):
    port = int(receiver.url.rsplit(":", 1)[1])
    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        return real("127.0.0.1" if host == "hooks.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    notify(alice, "r1", f"http://hooks.test:{port}/in?token=t0k")

    once()

    [received] = receiver.requests
    assert received.headers["Host"] == f"hooks.test:{port}"
    assert received.path == "/in?token=t0k"


def test_redirects_are_not_followed(alice, receiver):
    receiver.plan = [Answer(302, b"", headers={"Location": receiver.hook_url("/elsewhere")})]
    notify(alice, "r1", receiver.hook_url())

    once()

    assert len(receiver.requests) == 1
    assert WebhookDelivery.objects.get().last_status == 302  # a failure, retried later


def test_two_workers_never_send_one_delivery_twice(alice, receiver, run_worker):
    for n in range(40):
        notify(alice, f"r{n}", receiver.hook_url())

    run_worker(concurrency=8)
    run_worker(concurrency=8)
    wait_until(
        lambda: WebhookDelivery.objects.filter(state="delivered").count() == 40,
        timeout=30,
        what="40 deliveries",
    )

    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert len(ids) == 40 and len(set(ids)) == 40
    assert set(WebhookDelivery.objects.values_list("attempts", flat=True)) == {1}


def test_concurrent_claims_take_each_delivery_once(alice):
    for n in range(60):
        notify(alice, f"r{n}", "https://93.184.216.34/in")
    barrier = threading.Barrier(3)
    claims: list[list[int]] = []

    def claim():
        barrier.wait()
        try:
            claims.append([d.pk for d in services.delivery_claim(limit=60)])
        finally:
            from django.db import connection

            connection.close()

    threads = [threading.Thread(target=claim) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    taken = [pk for claimed in claims for pk in claimed]
    assert len(claims) == 3 and len(taken) == len(set(taken)) == 60


def test_a_crashed_workers_delivery_is_taken_again_after_its_lease(alice, receiver):
    notify(alice, "r1", receiver.hook_url())
    [crashed] = services.delivery_claim(limit=10)  # a worker claimed it, then died
    assert once() == 0  # its lease is live: nobody else sends it

    WebhookDelivery.objects.filter(pk=crashed.pk).update(
        claimed_until=timezone.now() - timedelta(seconds=1)
    )
    assert once() == 1

    delivery = WebhookDelivery.objects.get()
    assert (delivery.state, delivery.attempts) == ("delivered", 2)
    assert [r.headers["webhook-id"] for r in receiver.requests] == [webhook_id("r1")]


def test_a_stale_workers_result_does_not_overwrite_the_new_owner(alice):
    notify(alice, "r1", "https://93.184.216.34/in")
    [stale] = services.delivery_claim(limit=1)
    WebhookDelivery.objects.update(claimed_until=timezone.now() - timedelta(seconds=1))
    [owner] = services.delivery_claim(limit=1)
    ok = AttemptResult(started_at=timezone.now(), latency_ms=5, status_code=200)

    assert services.delivery_record(delivery=stale, result=ok) == "superseded"
    assert WebhookDelivery.objects.get().state == "delivering"  # the owner's still
    assert services.delivery_record(delivery=owner, result=ok) == "delivered"
    assert list(WebhookAttempt.objects.values_list("number", flat=True)) == [1, 2]


def test_a_new_delivery_wakes_an_idle_worker(alice, receiver, run_worker, monkeypatch):
    monkeypatch.setattr(defaults, "POLL_SECONDS", 5.0)  # a poll alone would take 5 s
    run_worker()
    wait_until(_blocked_on_wake, timeout=10, what="the worker waiting on the wake key")

    notify(alice, "r1", receiver.hook_url())

    wait_for_requests(receiver, 1, timeout=3)


def _blocked_on_wake() -> bool:
    from infra.stores import redis_connection

    clients = redis_connection().client_list()  # flag b: blocked right now
    return any(c.get("cmd") == "blpop" and "b" in c.get("flags", "") for c in clients)


def test_stop_lets_an_attempt_finish_within_the_grace_then_leaves_the_rest_to_the_lease(
    alice, receiver
):
    receiver.hold()
    notify(alice, "r1", receiver.hook_url())
    worker = WebhookWorker(concurrency=2, grace=0.2)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    wait_for_requests(receiver, 1)

    worker.stop()
    thread.join(10)

    assert not thread.is_alive()
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == "delivering" and delivery.claimed_until > timezone.now()
    assert not WebhookAttempt.objects.exists()


def test_attempts_are_logged_without_secret_or_signature(alice, receiver, caplog):
    caplog.set_level(logging.DEBUG)
    secret = services.webhook_secret_rotate(user=alice)
    receiver.plan = [500]
    notify(alice, "r1", f"{receiver.url}/in?token=client-token-123")

    once()  # 500
    WebhookDelivery.objects.update(next_attempt_at=timezone.now())
    once()  # 204

    lines = [r.getMessage() for r in caplog.records if r.name == "webhooks"]
    attempts = [line for line in lines if line.startswith("webhook attempt")]
    assert len(attempts) == 2
    assert "status=500" in attempts[0] and "outcome=http_error" in attempts[0]
    assert 'excerpt=\'{"error": "planned"}\'' in attempts[0]
    assert "status=204" in attempts[1] and "latency_ms=" in attempts[1]
    signatures = [r.headers["webhook-signature"] for r in receiver.requests]
    for record in caplog.records:
        text = record.getMessage()
        assert secret not in text and secret.removeprefix("whsec_") not in text
        assert "client-token-123" not in text
        assert not any(sig.removeprefix("v1,") in text for sig in signatures)
    assert not any(secret in a.response_excerpt + a.error for a in WebhookAttempt.objects.all())


def test_attempts_are_counted_in_metrics(alice, receiver):
    def delivered() -> float:
        return (
            REGISTRY.get_sample_value("svc_webhook_attempts_total", {"outcome": "delivered"}) or 0
        )

    before = delivered()
    notify(alice, "r1", receiver.hook_url())
    notify(alice, "r2", "https://93.184.216.34/in")  # stays pending: not sent by `once` below
    WebhookDelivery.objects.filter(request_id="r2").update(
        next_attempt_at=timezone.now() + timedelta(hours=1)
    )

    once()

    assert delivered() == before + 1
    families = {f.name: f for f in metrics.delivery_families()}
    pending = {s.labels["state"]: s.value for s in families["svc_webhook_deliveries"].samples}
    assert pending == {"pending": 1, "delivering": 0}


def test_the_command_delivers_what_is_due(alice, receiver, capsys):
    notify(alice, "r1", receiver.hook_url())
    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        call_command("runwebhooks", "--once", "--concurrency", "2")
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)

    assert "attempts: 1" in capsys.readouterr().out
    assert WebhookDelivery.objects.get().state == "delivered"


def test_proxies_named_by_the_environment_are_not_used(alice, receiver, monkeypatch):
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    notify(alice, "r1", receiver.hook_url())

    once()

    assert len(receiver.requests) == 1

"""Webhook tests: a loopback receiver (a real HTTP server on 127.0.0.1), the worker run in a
thread of this process, and a client with a signing secret.

The receiver is on 127.0.0.1 over http, which only SVC_WEBHOOK_ALLOW_PRIVATE accepts: the tests
that deliver turn it on (`allow_private`); the refusal tests leave it off, the default."""

import threading
from types import SimpleNamespace

import pytest
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from tests.live import wait_until
from tests.stubs.server import Answer, StubServer
from webhooks import services
from webhooks.models import WebhookDelivery
from webhooks.worker import WebhookWorker


class Receiver(StubServer):
    """Answers 204, or what `plan` says first (a status, or an Answer), one per attempt."""

    def __init__(self):
        super().__init__()
        self.plan: list[int | Answer] = []

    def answer(self, request):
        if not self.plan:
            return Answer(204, b"")
        planned = self.plan.pop(0)
        return (
            planned if isinstance(planned, Answer) else Answer.json(planned, {"error": "planned"})
        )

    def hook_url(self, path: str = "/hooks/svc") -> str:
        return f"{self.url}{path}"


@pytest.fixture(autouse=True)
def fernet_key(fresh_fernet_key):
    """Secrets are sealed with the config key; every test here has one."""
    return fresh_fernet_key


@pytest.fixture
def allow_private(settings):
    settings.SVC_WEBHOOK_ALLOW_PRIVATE = True


@pytest.fixture
def fast_retries(settings):
    """Retries after a tenth of a second (the default waits 5 s, then minutes)."""
    settings.SVC_WEBHOOK_RETRY_SCHEDULE = [0.1, 0.1, 0.1]


@pytest.fixture
def receiver(allow_private):
    with Receiver() as server:
        yield server


@pytest.fixture
def run_worker():
    """start() a WebhookWorker in a thread; every one is stopped (and joined) at teardown."""
    started: list[tuple[WebhookWorker, threading.Thread]] = []

    def start(concurrency: int = 4) -> WebhookWorker:
        worker = WebhookWorker(concurrency=concurrency, grace=5)
        thread = threading.Thread(target=worker.run, name="webhook-worker", daemon=True)
        thread.start()
        started.append((worker, thread))
        return worker

    yield start
    for worker, _ in started:
        worker.stop()
    for _, thread in started:
        thread.join(30)
        assert not thread.is_alive(), "a webhook worker did not stop"


def notify(user, request_id: str, url: str, *, event: str = "completed", events=None) -> None:
    services.webhook_notify(
        user_id=user.pk,
        request_id=request_id,
        webhook={"url": url, "events": events or [event]},
        event=event,
        body={"id": request_id, "status": "succeeded"},
    )


def delivery_state(webhook_id: str, state: str):
    """A waiter: the delivery once it is in `state`."""
    return lambda: WebhookDelivery.objects.filter(webhook_id=webhook_id, state=state).first()


def wait_for_requests(receiver: Receiver, count: int, timeout: float = 20):
    return wait_until(
        lambda: len(receiver.requests) >= count and receiver.requests,
        timeout=timeout,
        what=f"{count} webhook request(s)",
        describe=lambda: f"{len(receiver.requests)}",
    )


def ensure_roles() -> None:
    """The operator groups as the migrations make them (a transactional test's flush empties
    every table, and only migrations create these rows): api's roles, then webhooks'."""
    from importlib import import_module

    state_apps = MigrationLoader(connection).project_state().apps
    editor = SimpleNamespace(connection=connection)
    import_module("api.migrations.0006_operator_roles").roles_create(state_apps, editor)
    import_module("webhooks.migrations.0002_support_role").support_views(state_apps, editor)

"""Ended deliveries are kept SVC_WEBHOOK_KEEP_DAYS for the admin and redelivery, then deleted
with their attempts by the webhook worker; a delivery not ended yet is never deleted."""

from datetime import timedelta

import pytest
from django.utils import timezone

from webhooks import services
from webhooks.models import WebhookAttempt, WebhookDelivery
from webhooks.worker import WebhookWorker

pytestmark = pytest.mark.django_db


def delivery(user, name: str, state: str, age_days: float) -> WebhookDelivery:
    row = WebhookDelivery.objects.create(
        webhook_id=f"msg_{name:0>32}",
        user=user,
        request_id=name,
        event="completed",
        url="https://127.0.0.1:9/svc",  # refused at send time (private), never connected to
        payload="{}",
        state=state,
    )
    WebhookAttempt.objects.create(delivery=row, number=1, started_at=timezone.now())
    created = timezone.now() - timedelta(days=age_days)
    WebhookDelivery.objects.filter(pk=row.pk).update(created_at=created)
    return row


@pytest.fixture
def rows(alice):
    return {
        "old delivered": delivery(alice, "a", WebhookDelivery.DELIVERED, 40),
        "old failed": delivery(alice, "b", WebhookDelivery.FAILED, 40),
        "old stopped": delivery(alice, "c", WebhookDelivery.STOPPED, 40),
        "old pending": delivery(alice, "d", WebhookDelivery.PENDING, 40),
        "recent delivered": delivery(alice, "e", WebhookDelivery.DELIVERED, 1),
    }


def left() -> set[str]:
    return set(WebhookDelivery.objects.values_list("request_id", flat=True))


def test_prune_deletes_old_ended_deliveries_and_their_attempts_only(rows):
    pruned = services.delivery_prune(older_than=timezone.now() - timedelta(days=30))
    assert pruned == 3
    assert left() == {"d", "e"}
    assert set(WebhookAttempt.objects.values_list("delivery__request_id", flat=True)) == {"d", "e"}


def test_prune_takes_a_batch_at_a_time_oldest_first(alice):
    for n, age in enumerate((50, 45, 40)):
        delivery(alice, f"x{n}", WebhookDelivery.DELIVERED, age)
    assert services.delivery_prune(older_than=timezone.now(), limit=2) == 2
    assert left() == {"x2"}


@pytest.mark.django_db(transaction=True)  # the worker's SQL runs in a thread of its own
def test_the_worker_prunes_as_it_starts(rows, settings):
    settings.SVC_WEBHOOK_KEEP_DAYS = 30
    WebhookWorker(concurrency=1, once=True).run()  # the old pending one is due: sent, or not
    assert {"a", "b", "c"}.isdisjoint(left())
    assert "e" in left()

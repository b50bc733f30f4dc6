"""The services intake, settlement and the account endpoints call (webhooks/services.py)."""

import base64
from datetime import timedelta

import pytest
from django.db import connection, transaction
from django.http import QueryDict
from django.utils import timezone

from api.errors import ApplicationError
from infra.stores import redis_connection
from webhooks import defaults, services
from webhooks.models import WebhookDelivery, WebhookSettings, unseal

pytestmark = pytest.mark.django_db

PUBLIC = "https://93.184.216.34/hooks"


def query(text: str) -> QueryDict:
    return QueryDict(text)


def test_no_webhook_and_no_default_is_none(alice):
    assert services.webhook_for_intake(user_id=alice.pk, query=query("")) is None
    assert not WebhookSettings.objects.exists()  # nothing made for a request without webhook


def test_a_webhook_in_the_query_defaults_to_completed(alice):
    found = services.webhook_for_intake(user_id=alice.pk, query=query(f"webhook={PUBLIC}"))

    assert found == {"url": PUBLIC, "events": ["completed"]}


def test_events_are_parsed_deduplicated_and_ordered(alice):
    found = services.webhook_for_intake(
        user_id=alice.pk,
        query=query(f"webhook={PUBLIC}&webhook_events=completed,start,%20completed"),
    )

    assert found["events"] == ["start", "completed"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"webhook={PUBLIC}&webhook_events=start,finished", "unknown webhook event 'finished'"),
        (f"webhook={PUBLIC}&webhook_events=", "name at least one webhook event"),
        ("webhook=", "empty"),
        ("webhook=http://93.184.216.34/", "https"),
        ("webhook=https://127.0.0.1/", "loopback"),
        ("webhook_events=start", "webhook_events needs a webhook"),
        (f"webhook={PUBLIC}&webhook={PUBLIC}", "at most once"),
    ],
)
def test_a_bad_webhook_is_a_400_invalid_webhook(alice, text, message):
    with pytest.raises(ApplicationError) as refused:
        services.webhook_for_intake(user_id=alice.pk, query=query(text))

    assert (refused.value.code, refused.value.status) == ("invalid_webhook", 400)
    assert message in refused.value.message
    if "unknown" in message:
        assert "known: start, completed" in refused.value.message


def test_the_account_default_applies_without_a_query(alice):
    services.webhook_settings_set(user=alice, url=PUBLIC, events=["start", "completed"])

    assert services.webhook_for_intake(user_id=alice.pk, query=query("")) == {
        "url": PUBLIC,
        "events": ["start", "completed"],
    }
    assert services.webhook_for_intake(user_id=alice.pk, query=query("webhook_events=start")) == {
        "url": PUBLIC,
        "events": ["start"],
    }


def test_the_first_webhook_gets_the_client_a_secret_it_has_not_seen(alice):
    services.webhook_for_intake(user_id=alice.pk, query=query(f"webhook={PUBLIC}"))

    row = WebhookSettings.objects.get(user=alice)
    assert unseal(row.secret_sealed).startswith("whsec_")
    assert services.webhook_settings_get(user=alice)["has_secret"] is False


def test_settings_set_get_clear(alice):
    assert services.webhook_settings_get(user=alice) == {
        "url": None,
        "events": [],
        "has_secret": False,
    }
    services.webhook_settings_set(user=alice, url=PUBLIC)
    assert services.webhook_settings_get(user=alice)["events"] == ["completed"]

    services.webhook_secret_rotate(user=alice)
    cleared = services.webhook_settings_clear(user=alice)

    assert cleared == {"url": None, "events": [], "has_secret": True}  # the secret stays
    with pytest.raises(ApplicationError, match="loopback"):
        services.webhook_settings_set(user=alice, url="https://[::1]/")


def test_notify_queues_one_delivery_per_request_and_event(alice):
    webhook = {"url": PUBLIC, "events": ["start", "completed"]}
    for event in ("start", "completed", "completed"):
        services.webhook_notify(
            user_id=alice.pk, request_id="r1", webhook=webhook, event=event, body={"id": "r1"}
        )

    deliveries = WebhookDelivery.objects.order_by("event")
    assert [(d.event, d.state, d.attempts) for d in deliveries] == [
        ("completed", "pending", 0),
        ("start", "pending", 0),
    ]
    completed = deliveries[0]
    assert completed.webhook_id == services.webhook_id_for(request_id="r1", event="completed")
    assert completed.webhook_id.startswith("msg_")
    assert completed.next_attempt_at <= timezone.now()


def test_notify_skips_events_not_asked_for_and_requests_without_webhook(alice):
    services.webhook_notify(
        user_id=alice.pk,
        request_id="r1",
        webhook={"url": PUBLIC, "events": ["completed"]},
        event="start",
        body={},
    )
    services.webhook_notify(user_id=alice.pk, request_id="r2", webhook=None, event="start", body={})

    assert not WebhookDelivery.objects.exists()


def test_the_payload_is_a_standard_webhooks_envelope(alice):
    services.webhook_notify(
        user_id=alice.pk,
        request_id="r1",
        webhook={"url": PUBLIC, "events": ["completed"]},
        event="completed",
        body={"id": "r1", "at": timezone.now(), "text": "naïve"},
    )

    payload = WebhookDelivery.objects.get().payload
    assert payload.startswith('{"type":"request.completed","timestamp":"')
    assert '"data":{"id":"r1","at":"' in payload and "naïve" in payload


def test_notify_commits_with_the_callers_transaction(alice, django_capture_on_commit_callbacks):
    webhook = {"url": PUBLIC, "events": ["completed"]}
    with pytest.raises(RuntimeError), transaction.atomic():
        services.webhook_notify(
            user_id=alice.pk, request_id="r1", webhook=webhook, event="completed", body={}
        )
        raise RuntimeError("the charge failed")
    assert not WebhookDelivery.objects.exists()

    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        services.webhook_notify(
            user_id=alice.pk, request_id="r1", webhook=webhook, event="completed", body={}
        )
        assert redis_connection().llen(defaults.WAKE_KEY) == 0  # not before the commit
    assert redis_connection().llen(defaults.WAKE_KEY) == 1


def test_rotation_returns_the_secret_once_and_keeps_the_one_the_client_had(alice):
    first = services.webhook_secret_rotate(user=alice)
    row = WebhookSettings.objects.get(user=alice)
    assert unseal(row.secret_sealed) == first and row.previous_secret_sealed == ""
    assert services.webhook_previous_valid_until(user=alice) is None

    second = services.webhook_secret_rotate(user=alice)

    row.refresh_from_db()
    assert second != first and unseal(row.secret_sealed) == second
    assert unseal(row.previous_secret_sealed) == first
    until = services.webhook_previous_valid_until(user=alice)
    assert timedelta(hours=23, minutes=59) < until - timezone.now() <= timedelta(hours=24)


def test_a_secret_never_shown_is_dropped_by_the_first_rotation(alice):
    services.webhook_for_intake(user_id=alice.pk, query=query(f"webhook={PUBLIC}"))

    services.webhook_secret_rotate(user=alice)

    row = WebhookSettings.objects.get(user=alice)
    assert row.previous_secret_sealed == "" and row.previous_until is None


def test_no_secret_is_in_sql_in_clear(alice):
    secrets = [services.webhook_secret_rotate(user=alice) for _ in range(2)]

    dump = "\n".join(connection.connection.iterdump())  # the whole SQLite database, as SQL
    for secret in secrets:
        raw = base64.b64decode(secret.removeprefix("whsec_"))
        for form in (secret, secret.removeprefix("whsec_"), raw.hex()):
            assert form not in dump


def test_without_a_config_key_a_webhook_is_a_503_not_a_500(alice, monkeypatch):
    monkeypatch.delenv("CONFIG_FERNET_KEY")

    with pytest.raises(ApplicationError) as refused:
        services.webhook_for_intake(user_id=alice.pk, query=query(f"webhook={PUBLIC}"))

    assert (refused.value.code, refused.value.status) == ("unavailable", 503)

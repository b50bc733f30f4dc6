"""The webhooks admin: deliveries with their attempts, the redeliver action (superusers; audited),
clients' settings without any secret; support views everything and changes nothing."""

import pytest
from auditlog.models import LogEntry
from django.contrib.auth.models import Group
from django.test import Client
from django.urls import reverse

from tests.webhooks.conftest import ensure_roles, notify
from webhooks import services
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSettings
from webhooks.worker import WebhookWorker

CHANGELIST = "admin:webhooks_webhookdelivery_changelist"


@pytest.fixture
def operator(django_user_model) -> Client:
    client = Client()
    client.force_login(
        django_user_model.objects.create_user("olga", is_staff=True, is_superuser=True)
    )
    return client


@pytest.fixture
def support(django_user_model) -> Client:
    ensure_roles()
    user = django_user_model.objects.create_user("sam", is_staff=True)
    user.groups.add(Group.objects.get(name="support"))
    client = Client()
    client.force_login(user)
    return client


def redeliver(client: Client, delivery: WebhookDelivery):
    return client.post(
        reverse(CHANGELIST),
        {"action": "redeliver", "_selected_action": [delivery.pk], "index": "0"},
    )


@pytest.mark.django_db(transaction=True)  # the worker's SQL thread must see the redelivery
def test_redeliver_makes_a_new_attempt_with_the_same_id(alice, receiver, operator):
    notify(alice, "r1", receiver.hook_url())
    WebhookWorker(concurrency=1, once=True).run()
    delivery = WebhookDelivery.objects.get()
    assert delivery.state == "delivered"

    response = redeliver(operator, delivery)
    assert response.status_code == 302
    delivery.refresh_from_db()
    assert delivery.state == "pending"
    WebhookWorker(concurrency=1, once=True).run()

    ids = [r.headers["webhook-id"] for r in receiver.requests]
    assert ids == [delivery.webhook_id] * 2
    assert list(WebhookAttempt.objects.values_list("number", "status_code")) == [(1, 204), (2, 204)]
    entry = LogEntry.objects.get(additional_data__admin_action="redeliver")
    assert entry.changes_dict == {"state": ["delivered", "pending"]}
    assert entry.actor.username == "olga"


@pytest.mark.django_db
def test_a_delivery_being_sent_is_not_redelivered(alice, operator):
    notify(alice, "r1", "https://93.184.216.34/in")
    [claimed] = services.delivery_claim(limit=1)

    redeliver(operator, claimed)

    claimed.refresh_from_db()
    assert claimed.state == "delivering"


@pytest.mark.django_db
def test_the_delivery_pages_show_attempts_and_find_by_request_id(alice, operator):
    notify(alice, "r-find-me", "https://93.184.216.34/in")
    notify(alice, "r-other", "https://93.184.216.34/in")
    delivery = WebhookDelivery.objects.get(request_id="r-find-me")
    WebhookAttempt.objects.create(
        delivery=delivery,
        number=1,
        started_at=delivery.created_at,
        status_code=502,
        latency_ms=12,
        response_excerpt="bad gateway from the receiver",
    )

    found = operator.get(reverse(CHANGELIST), {"q": "r-find-me"}).content.decode()
    page = operator.get(
        reverse("admin:webhooks_webhookdelivery_change", args=[delivery.pk])
    ).content.decode()

    assert "r-find-me" in found and "r-other" not in found
    assert "bad gateway from the receiver" in page and "502" in page
    assert 'name="_save"' not in page  # read-only: nothing to save


@pytest.mark.django_db
def test_a_delivery_page_cannot_be_saved(alice, operator):
    notify(alice, "r1", "https://93.184.216.34/in")
    delivery = WebhookDelivery.objects.get()
    WebhookDelivery.objects.update(state="delivered")  # the worker moved it meanwhile

    response = operator.post(
        reverse("admin:webhooks_webhookdelivery_change", args=[delivery.pk]),
        {"attempt_records-TOTAL_FORMS": "0", "attempt_records-INITIAL_FORMS": "0", "_save": "1"},
    )

    assert response.status_code == 403

    assert WebhookDelivery.objects.get().state == "delivered"


@pytest.mark.django_db
def test_support_views_deliveries_but_cannot_redeliver(alice, support):
    notify(alice, "r1", "https://93.184.216.34/in")
    delivery = WebhookDelivery.objects.get()
    WebhookDelivery.objects.update(state="failed")

    listing = support.get(reverse(CHANGELIST))
    page = support.get(reverse("admin:webhooks_webhookdelivery_change", args=[delivery.pk]))
    redeliver(support, delivery)

    assert listing.status_code == 200 and page.status_code == 200
    assert "redeliver" not in listing.content.decode()
    assert WebhookDelivery.objects.get().state == "failed"


@pytest.mark.django_db
def test_no_settings_page_shows_a_secret(alice, operator, support):
    services.webhook_settings_set(user=alice, url="https://93.184.216.34/in")
    secrets = [services.webhook_secret_rotate(user=alice) for _ in range(2)]
    row = WebhookSettings.objects.get()

    for client in (operator, support):
        pages = [
            client.get(reverse("admin:webhooks_webhooksettings_changelist")),
            client.get(reverse("admin:webhooks_webhooksettings_change", args=[row.pk])),
        ]
        for response in pages:
            assert response.status_code == 200
            text = response.content.decode()
            assert "https://93.184.216.34/in" in text
            assert not any(s in text or s.removeprefix("whsec_") in text for s in secrets)
            assert row.secret_sealed not in text and "gAAAAA" not in text


# The statuses tests/api/test_admin_roles.py's table gets for these pages (finance and catalog
# editors have no webhooks permission: a staff user without a group stands for them).
PAGES = """
page                                  support staff operator
webhooks.webhookdelivery changelist   200     403   200
webhooks.webhookdelivery add          403     403   403
webhooks.webhookdelivery change       200     403   200
webhooks.webhookdelivery delete       403     403   403
webhooks.webhookdelivery history      200     403   200
webhooks.webhooksettings changelist   200     403   200
webhooks.webhooksettings add          403     403   403
webhooks.webhooksettings change       200     403   200
webhooks.webhooksettings delete       403     403   403
webhooks.webhooksettings history      200     403   200
app webhooks                          200     404   200
"""


@pytest.fixture
def staff(django_user_model) -> Client:
    client = Client()
    client.force_login(django_user_model.objects.create_user("stan", is_staff=True))
    return client


@pytest.mark.django_db
def test_who_may_open_which_webhooks_page(alice, support, staff, operator):
    notify(alice, "r1", "https://93.184.216.34/in")
    objects = {
        "webhooks.webhookdelivery": WebhookDelivery.objects.get(),
        "webhooks.webhooksettings": WebhookSettings.objects.create(user=alice, secret_sealed="x"),
    }
    personas = {"support": support, "staff": staff, "operator": operator}
    header, *rows = [line.split() for line in PAGES.strip().splitlines()]
    found, expected = {}, {}
    for *page, support_status, staff_status, operator_status in rows:
        page = " ".join(page)
        if page.startswith("app "):
            url = reverse("admin:app_list", args=["webhooks"])
        else:
            label, suffix = page.split()
            name = f"admin:{label.replace('.', '_')}_{suffix}"
            args = [objects[label].pk] if suffix in ("change", "delete", "history") else []
            url = reverse(name, args=args)
        statuses = (support_status, staff_status, operator_status)
        for persona, status in zip(personas, statuses, strict=True):
            expected[(page, persona)] = int(status)
            found[(page, persona)] = personas[persona].get(url).status_code
    assert found == expected

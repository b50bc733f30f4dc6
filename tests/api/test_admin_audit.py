"""The audit trail (api/admin/audit.py): an admin change leaves an entry with who, what, when,
before and after, and no entry holds a secret."""

import json
import re

import pytest
from auditlog.context import set_actor
from auditlog.models import LogEntry
from django.contrib.auth.models import Group
from django.urls import reverse

from api.keys import ApiKey, key_hash
from api.models import ServiceOffer
from api.services.keys import key_issue

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def logged_in(client, user):
    client.force_login(user)
    return client


def entries_for(obj) -> list[LogEntry]:
    return list(LogEntry.objects.get_for_object(obj).order_by("timestamp", "pk"))


def offer_change_form(offer: ServiceOffer, **overrides) -> dict:
    data = {
        "service": offer.service,
        "action": offer.action,
        "handler": offer.handler_id,
        "prompt_template": offer.prompt_template,
        "params": json.dumps(offer.params),
        "price": str(offer.price),
        "create_qty": str(offer.create_qty),
        "expiration": "",
        "max_retries": "",
        "fallbacks": "[]",
        "credentials": "",
        "description": offer.description,
        "is_active": "on",
    }
    return data | overrides


def test_an_offer_price_change_records_who_when_before_and_after(
    client, catalog_editor, greet_offer
):
    url = reverse("admin:api_serviceoffer_change", args=[greet_offer.pk])
    response = logged_in(client, catalog_editor).post(
        url, offer_change_form(greet_offer, price="9"), REMOTE_ADDR="198.51.100.4"
    )
    assert response.status_code == 302

    entry = entries_for(greet_offer)[-1]
    assert entry.action == LogEntry.Action.UPDATE
    assert entry.actor == catalog_editor
    assert entry.changes_dict == {"price": ["3", "9"]}
    assert entry.remote_addr == "198.51.100.4"
    assert entry.timestamp is not None


def test_the_address_is_the_proxys_client_only_when_a_proxy_is_trusted(
    client, settings, catalog_editor, greet_offer
):
    url = reverse("admin:api_serviceoffer_change", args=[greet_offer.pk])
    logged_in(client, catalog_editor)
    headers = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 203.0.113.9"}

    settings.SVC_PROXY_COUNT = 0
    client.post(url, offer_change_form(greet_offer, price="4"), **headers)
    settings.SVC_PROXY_COUNT = 1
    client.post(url, offer_change_form(greet_offer, price="5"), **headers)

    assert [e.remote_addr for e in entries_for(greet_offer)[-2:]] == ["10.0.0.2", "203.0.113.9"]


def test_creating_and_deleting_an_offer_is_recorded(client, catalog_editor, greet_offer):
    logged_in(client, catalog_editor)
    pk = greet_offer.pk
    response = client.post(reverse("admin:api_serviceoffer_delete", args=[pk]), {"post": "yes"})
    assert response.status_code == 302

    actions = LogEntry.objects.filter(object_pk=str(pk), content_type__model="serviceoffer")
    assert list(actions.order_by("pk").values_list("action", flat=True)) == [
        LogEntry.Action.CREATE,
        LogEntry.Action.DELETE,
    ]
    assert actions.order_by("pk").last().actor == catalog_editor


def test_the_grant_action_records_the_balance_before_and_after(client, finance, alice):
    response = logged_in(client, finance).post(
        reverse("admin:api_account_changelist"),
        {
            "action": "grant_credits",
            "_selected_action": [alice.account.pk],
            "index": "0",
            "apply": "1",
            "amount": "25",
            "note": "goodwill",
        },
    )
    assert response.status_code == 302

    entry = entries_for(alice.account)[-1]
    assert entry.actor == finance
    assert entry.action == LogEntry.Action.UPDATE
    assert entry.changes_dict == {"balance": ["1000", "1025"]}
    assert entry.additional_data["admin_action"] == "grant_credits"
    assert (entry.additional_data["amount"], entry.additional_data["note"]) == (25, "goodwill")


def test_the_revoke_action_records_who_revoked_the_key(client, finance, alice):
    key = key_issue(key=ApiKey(user=alice, name="ci")).key
    response = logged_in(client, finance).post(
        reverse("admin:api_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [key.pk], "index": "0"},
    )
    assert response.status_code == 302
    key.refresh_from_db()

    entry = entries_for(key)[-1]
    assert entry.actor == finance
    assert entry.changes_dict == {"revoked_at": ["None", str(key.revoked_at)]}
    assert entry.additional_data == {"admin_action": "revoke_keys"}


def test_a_new_api_key_is_recorded_without_its_secret_or_hash(client, finance, alice):
    response = logged_in(client, finance).post(
        reverse("admin:api_apikey_add"),
        {"user": alice.pk, "name": "from admin", "allowed": "[]", "budget_period": "month"},
    )
    assert response.status_code == 200
    secret = re.search(rb"svc_(live|test)_[0-9A-Za-z]{42}", response.content).group().decode()
    key = ApiKey.objects.get(hashed=key_hash(secret))

    [entry] = entries_for(key)
    assert entry.actor == finance and entry.action == LogEntry.Action.CREATE
    stored = json.dumps(entry.changes) + json.dumps(entry.additional_data)
    assert secret not in stored and key.hashed not in stored
    assert {"hashed", "period_spent", "in_flight", "last_used_at"}.isdisjoint(entry.changes_dict)
    assert entry.changes_dict["prefix"][1] == key.prefix


def test_a_password_change_is_recorded_masked_whole(client, operator, alice):
    logged_in(client, operator)
    response = client.post(
        reverse("admin:auth_user_password_change", args=[alice.pk]),
        {"password1": "a-new-long-password", "password2": "a-new-long-password"},
    )
    assert response.status_code == 302
    alice.refresh_from_db()

    entry = entries_for(alice)[-1]
    assert entry.actor == operator
    assert entry.changes_dict["password"] == ["********", "********"]
    assert alice.password not in json.dumps(entry.changes)


def test_logging_in_leaves_no_entry(client, alice):
    alice.set_password("a-long-password")
    alice.save()
    before = LogEntry.objects.count()
    alice.is_staff = True
    alice.save(update_fields=["is_staff"])
    client.force_login(alice)  # moves last_login only
    assert LogEntry.objects.count() == before + 1  # the is_staff change, not the login


def test_making_someone_an_operator_is_recorded(operator, alice):
    with set_actor(operator):
        alice.groups.add(Group.objects.get(name="finance"))

    entry = entries_for(alice)[-1]
    assert entry.actor == operator
    assert entry.changes_dict["groups"]["objects"] == ["finance"]


def test_support_reads_the_log_but_cannot_change_it(client, support, catalog_editor, greet_offer):
    url = reverse("admin:api_serviceoffer_change", args=[greet_offer.pk])
    logged_in(client, catalog_editor).post(url, offer_change_form(greet_offer, price="8"))
    entry = entries_for(greet_offer)[-1]

    logged_in(client, support)
    changelist = client.get(reverse("admin:auditlog_logentry_changelist"))
    assert changelist.status_code == 200 and str(greet_offer) in changelist.content.decode()
    change = reverse("admin:auditlog_logentry_change", args=[entry.pk])
    assert client.get(change).status_code == 200
    assert client.post(change, {"action": "0"}).status_code == 403
    assert (
        client.post(reverse("admin:auditlog_logentry_delete", args=[entry.pk])).status_code == 403
    )
    assert LogEntry.objects.filter(pk=entry.pk).exists()

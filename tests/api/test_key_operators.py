"""Operators' key tools: `manage.py key create|list|revoke`, the admin's key pages (the key
shown once), and the migration that turned DRF's plaintext tokens into hashed keys."""

import io
import re
import secrets

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from rest_framework.test import APIClient

from api.keys import ApiKey, key_hash

pytestmark = pytest.mark.django_db


def key_command(*args) -> list[str]:
    out = io.StringIO()
    call_command("key", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().splitlines()


def works(secret: str) -> bool:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return api.get("/svc/account/").status_code == 200


def test_key_create_prints_a_working_key_last_then_list_and_revoke(alice):
    lines = key_command(
        "create",
        "alice",
        "--name",
        "ci",
        "--budget",
        "100",
        "--period",
        "week",
        "--rpm",
        "60",
        "--allow",
        "text/*",
        "--expires-in-days",
        "30",
    )
    secret = lines[-1]
    assert re.fullmatch(r"svc_live_[0-9A-Za-z]{42}", secret) and works(secret)
    key = ApiKey.objects.get(hashed=key_hash(secret))
    assert (key.name, key.budget, key.budget_period, key.rate_per_minute, key.allowed) == (
        "ci",
        100,
        "week",
        60,
        ["text/*"],
    )
    listing = "\n".join(key_command("list", "alice"))
    assert key.display in listing and secret not in listing and "active" in listing

    assert key_command("revoke", str(key.pk)) == [f"key {key.pk} {key.display}: revoked"]
    assert not works(secret)
    assert "revoked" in "\n".join(key_command("list"))


@pytest.mark.parametrize(
    "args, reason",
    [
        (["create", "nobody"], "no client 'nobody'"),
        (["create", "alice", "--budget", "0"], "--budget must be 1 or more"),
        (["create", "alice", "--allow", "nonsense"], 'patterns must read "service/action"'),
        (["revoke", "999999"], "no key with id 999999; nothing revoked"),
    ],
)
def test_key_command_refuses_bad_input_in_one_line(alice, args, reason):
    before = ApiKey.objects.count()
    with pytest.raises(CommandError, match=re.escape(reason)):
        key_command(*args)
    assert ApiKey.objects.count() == before


def test_the_admin_shows_a_new_key_once_and_never_its_hash(admin_client, alice):
    response = admin_client.post(
        "/admin/api/apikey/add/",
        {"user": alice.pk, "name": "from admin", "allowed": "[]", "budget_period": "month"},
    )
    assert response.status_code == 200, response.content
    secret = re.search(rb"svc_live_[0-9A-Za-z]{42}", response.content).group().decode()
    assert works(secret) and "no-store" in response["Cache-Control"]
    key = ApiKey.objects.get(hashed=key_hash(secret))
    assert key.created_by == "admin: admin"
    for page in ("/admin/api/apikey/", f"/admin/api/apikey/{key.pk}/change/"):
        body = admin_client.get(page).content.decode()
        assert key.display in body and secret not in body and key.hashed not in body


def test_the_admin_revokes_keys_in_bulk(admin_client, alice_api):
    response = admin_client.post(
        "/admin/api/apikey/",
        {"action": "revoke_keys", "_selected_action": [alice_api.key.pk]},
    )
    assert response.status_code == 302
    assert alice_api.get("/svc/account/").status_code == 401


def test_the_admin_offers_keys_only_for_clients(admin_client, admin_user, alice):
    response = admin_client.post(
        "/admin/api/apikey/add/",
        {"user": admin_user.pk, "name": "x", "allowed": "[]", "budget_period": "month"},
    )
    assert response.status_code == 200 and b"Select a valid choice" in response.content
    assert not ApiKey.objects.filter(user=admin_user).exists()


@pytest.mark.django_db(transaction=True)
def test_drf_tokens_become_hashed_keys_that_keep_working(django_user_model):
    carol = django_user_model.objects.create_user("carol")
    token = secrets.token_hex(20)  # DRF's format: 40 hex characters
    executor = MigrationExecutor(connection)
    executor.migrate([("api", "0004_offer_resilience")])
    with connection.cursor() as cursor:  # DRF's table, as its own migrations left it
        cursor.execute(
            'CREATE TABLE authtoken_token ("key" varchar(40) NOT NULL PRIMARY KEY, '
            '"created" datetime NOT NULL, "user_id" integer NOT NULL UNIQUE)'
        )
        cursor.execute(
            "INSERT INTO authtoken_token VALUES (%s, CURRENT_TIMESTAMP, %s)", [token, carol.pk]
        )
        cursor.execute(
            "INSERT INTO django_migrations (app, name, applied) "
            "VALUES ('authtoken', '0001_initial', CURRENT_TIMESTAMP)"
        )
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())

    assert "authtoken_token" not in connection.introspection.table_names()
    key = ApiKey.objects.get(user=carol)
    assert key.legacy and key.hashed == key_hash(token) and key.last_four == token[-4:]
    for scheme in ("Token", "Bearer"):
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"{scheme} {token}")
        assert api.get("/svc/account/").status_code == 200
    key.revoked_at = key.created_at
    key.save()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get("/svc/account/").status_code == 401
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM django_migrations WHERE app = 'authtoken'")
        assert cursor.fetchone() == (0,)

import hashlib
import io
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError
from rest_framework.test import APIClient

from api.keys import ApiKey
from api.models import Account

pytestmark = pytest.mark.django_db


def create_client(*args) -> list[str]:
    out = io.StringIO()
    call_command("create_client", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue().splitlines()


@pytest.mark.parametrize("scheme", ["Bearer", "Token"])
def test_it_prints_a_key_that_authenticates_as_the_last_line(scheme):
    key = create_client("carol", "--credits", "50")[-1]

    assert re.fullmatch(r"svc_live_[0-9A-Za-z]{42}", key)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"{scheme} {key}")
    response = api.get("/svc/request/nonexistent/")

    assert response.status_code == 404, response.content  # authenticated: not 401
    assert APIClient().get("/svc/request/nonexistent/").status_code == 401


def test_it_stores_the_key_hashed_only():
    key = create_client("carol")[-1]
    stored = ApiKey.objects.get(user__username="carol")
    assert key not in {str(getattr(stored, f.attname)) for f in ApiKey._meta.fields}
    assert stored.hashed == hashlib.sha256(key.encode()).hexdigest()
    assert stored.display == f"{key[:13]}…{key[-4:]}" and stored.can_manage_keys


def test_it_creates_a_non_staff_client_with_the_credits():
    lines = create_client("carol", "--credits", "50")
    user = get_user_model().objects.get(username="carol")
    assert not user.is_staff and not user.is_superuser and not user.has_usable_password()
    assert user.account.balance == 50
    assert lines[0].startswith("client carol created: +50 credits, balance 50; new key svc_")


def test_a_rerun_adds_credits_and_a_new_key_while_the_first_keeps_working():
    first = create_client("carol", "--credits", "50")[-1]
    lines = create_client("carol", "--credits", "7")
    assert lines[-1] != first
    assert lines[0].startswith("client carol updated: +7 credits, balance 57; new key")
    assert Account.objects.get(user__username="carol").balance == 57
    for key in (first, lines[-1]):
        api = APIClient()
        api.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
        assert api.get("/svc/account/").status_code == 200


def test_it_gives_an_existing_user_without_account_an_account(django_user_model):
    django_user_model.objects.create_user("dave")
    create_client("dave")
    assert Account.objects.get(user__username="dave").balance == 0


def test_it_rejects_negative_credits():
    with pytest.raises(CommandError, match="--credits must be 0 or more"):
        create_client("carol", "--credits", "-1")
    assert not get_user_model().objects.filter(username="carol").exists()


def test_it_rejects_a_staff_user(admin_user):
    with pytest.raises(CommandError, match="is a staff user"):
        create_client(admin_user.username, "--credits", "5")
    assert not Account.objects.filter(user=admin_user).exists()


def test_it_rejects_an_invalid_name():
    with pytest.raises(CommandError, match="invalid name 'a b'"):
        create_client("a b")

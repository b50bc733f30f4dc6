"""`POST /svc/account/webhook_secret/` and `GET/PUT/DELETE /svc/account/webhook/`."""

import pytest
from rest_framework.test import APIClient

from api.services.keys import key_create
from tests.helpers import error_code
from webhooks.models import WebhookSettings, unseal

pytestmark = [pytest.mark.django_db, pytest.mark.urls("tests.webhooks.urls")]

SECRET = "/svc/account/webhook_secret/"
DEFAULT = "/svc/account/webhook/"
PUBLIC = "https://93.184.216.34/hooks"


@pytest.fixture
def plain_key_api(alice) -> APIClient:
    """Alice with a key that cannot manage keys."""
    client = APIClient()
    created = key_create(user=alice, name="ci", can_manage_keys=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.secret}")
    return client


def test_the_secret_is_answered_once_and_rotation_keeps_the_previous_for_a_day(alice_api, alice):
    first = alice_api.post(SECRET)
    second = alice_api.post(SECRET)

    assert first.status_code == 201 and second.status_code == 201
    assert first.json()["secret"].startswith("whsec_")
    assert first.json()["previous_valid_until"] is None
    assert second.json()["previous_valid_until"].endswith("Z")
    assert first["Cache-Control"] == "no-store"
    assert unseal(WebhookSettings.objects.get(user=alice).secret_sealed) == second.json()["secret"]
    shown = alice_api.get(DEFAULT).json()
    assert shown == {"url": None, "events": [], "has_secret": True}
    assert "whsec_" not in str(shown)


def test_the_default_webhook_is_set_read_and_cleared(alice_api):
    put = alice_api.put(DEFAULT, {"url": PUBLIC, "events": ["completed", "start"]}, format="json")

    assert put.status_code == 200
    assert put.json() == {"url": PUBLIC, "events": ["start", "completed"], "has_secret": False}
    assert alice_api.get(DEFAULT).json()["url"] == PUBLIC
    cleared = alice_api.delete(DEFAULT)
    assert cleared.status_code == 200 and cleared.json()["url"] is None


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"url": "https://127.0.0.1/"}, "invalid_webhook"),
        ({"url": "http://93.184.216.34/"}, "invalid_webhook"),
        ({"url": PUBLIC, "events": ["finished"]}, "invalid_webhook"),
        ({"url": PUBLIC, "events": []}, "invalid_webhook"),
        ({"events": ["start"]}, "invalid_inputs"),
        ({"url": 7}, "invalid_inputs"),
        ({"url": PUBLIC, "events": "start"}, "invalid_inputs"),
        ({"url": PUBLIC, "secret": "whsec_x"}, "invalid_inputs"),
    ],
)
def test_a_bad_default_is_a_400_and_changes_nothing(alice_api, alice, body, code):
    response = alice_api.put(DEFAULT, body, format="json")

    assert response.status_code == 400
    assert error_code(response) == code
    assert not WebhookSettings.objects.filter(user=alice).exclude(url="").exists()


def test_changing_needs_a_key_that_manages_keys_reading_does_not(plain_key_api):
    assert plain_key_api.get(DEFAULT).status_code == 200
    for response in (
        plain_key_api.post(SECRET),
        plain_key_api.put(DEFAULT, {"url": PUBLIC}, format="json"),
        plain_key_api.delete(DEFAULT),
    ):
        assert response.status_code == 403 and error_code(response) == "forbidden"


def test_without_a_key_it_is_401(anon_api):
    assert anon_api.post(SECRET).status_code == 401
    assert anon_api.get(DEFAULT).status_code == 401


def test_each_client_sees_only_its_own(alice_api, bob_api):
    alice_api.put(DEFAULT, {"url": PUBLIC}, format="json")

    assert bob_api.get(DEFAULT).json()["url"] is None

"""API keys: format and checksum, hashed storage, authentication, management over the API,
and per-key limits (allowed offers, budget per period, rate, requests in flight)."""

from datetime import timedelta

import pytest
from django.test import override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from api.documents import ServiceRequest
from api.keys import ApiKey, checksum, key_environment, key_generate, period_start
from api.models import LedgerEntry
from api.services.keys import key_create, key_revoke
from api.services.requests import request_fail
from api.services.settlement import request_settle
from executor.queues import get_queue

pytestmark = pytest.mark.django_db

GREET = "/svc/text/greet/"


def inputs(i: int = 0) -> dict:
    return {"name": f"n{i}", "place": "here"}


def client_with(user, **limits) -> APIClient:
    created = key_create(user=user, name="limited", **limits)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {created.secret}")
    api.key, api.secret = created.key, created.secret
    return api


def code(response) -> str:
    return response.json()["error"]["code"]


def stored() -> tuple[int, int, int]:
    """Request documents, ledger rows, queued jobs: what a refused request must not change."""
    return ServiceRequest.objects.count(), LedgerEntry.objects.count(), get_queue("svc-local").count


# --- the key itself ------------------------------------------------------------------------


def test_a_key_is_typed_with_a_valid_checksum():
    key = key_generate("live")
    assert key.startswith("svc_live_") and len(key) == len("svc_live_") + 42
    assert key_environment(key) == "live"
    body = key[len("svc_live_") :]
    assert checksum(body[:-6]) == body[-6:]


def test_a_mistyped_key_is_refused_without_a_query(alice, django_assert_num_queries):
    key = key_create(user=alice, name="k").secret
    mistyped = key[:-7] + ("A" if key[-7] != "A" else "B") + key[-6:]
    assert key_environment(mistyped) is None
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {mistyped}")
    with django_assert_num_queries(0):
        response = api.get("/svc/account/")
    assert response.status_code == 401 and "checksum" in response.json()["error"]["message"]


def test_only_a_hash_and_a_display_part_are_stored(alice):
    created = key_create(user=alice, name="k")
    row = ApiKey.objects.values().get(pk=created.key.pk)
    assert created.secret not in " ".join(str(v) for v in row.values())
    assert created.key.display == f"{created.secret[:13]}…{created.secret[-4:]}"


@pytest.mark.parametrize("scheme", ["Bearer", "Token", "bearer"])
def test_both_schemes_authenticate_with_one_query(alice, scheme, django_assert_num_queries):
    secret = key_create(user=alice, name="k", can_manage_keys=True).secret
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"{scheme} {secret}")
    api.get("/svc/request/x/")  # the first use writes last_used_at
    with django_assert_num_queries(2):  # the key with its user, then the list of keys
        assert api.get("/svc/account/keys/").status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer a b",
        "Basic dXNlcjpwYXNz",
        "Bearer " + "x" * 65,
        "Bearer svc_live_short",
        "Token 0123456789abcdef0123456789abcdef01234567",
    ],
)
def test_malformed_or_unknown_keys_answer_401(alice, greet_offer, header):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=header)
    before = stored()
    response = api.post(GREET, inputs(), format="json")
    assert response.status_code == 401 and code(response) == "not_authenticated"
    assert response["WWW-Authenticate"] == 'Bearer realm="api"'
    assert stored() == before


def test_a_revoked_key_is_refused_at_once(alice_api):
    assert alice_api.get("/svc/account/").status_code == 200
    key_revoke(key=alice_api.key)
    response = alice_api.get("/svc/account/")
    assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]


def test_an_expired_key_is_refused(alice):
    api = client_with(alice, expires_at=timezone.now() + timedelta(minutes=1))
    assert api.get("/svc/account/").status_code == 200
    ApiKey.objects.filter(pk=api.key.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = api.get("/svc/account/")
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]


def test_a_key_of_the_other_environment_is_refused(alice):
    api = client_with(alice, environment="test")  # this deployment issues live keys
    response = api.get("/svc/account/")
    assert response.status_code == 401 and "test key" in response.json()["error"]["message"]


def test_an_inactive_clients_keys_are_refused(alice_api, alice):
    alice.is_active = False
    alice.save()
    assert alice_api.get("/svc/account/").status_code == 401


def test_last_used_is_written_at_most_once_a_minute(alice_api):
    assert alice_api.key.last_used_at is None
    alice_api.get("/svc/account/")
    first = ApiKey.objects.get(pk=alice_api.key.pk).last_used_at
    assert first is not None
    alice_api.get("/svc/account/")
    assert ApiKey.objects.get(pk=alice_api.key.pk).last_used_at == first
    ApiKey.objects.filter(pk=alice_api.key.pk).update(last_used_at=first - timedelta(minutes=2))
    alice_api.get("/svc/account/")
    assert ApiKey.objects.get(pk=alice_api.key.pk).last_used_at > first


# --- managing keys over the API ------------------------------------------------------------


def test_a_client_creates_lists_and_revokes_its_keys(alice_api):
    response = alice_api.post(
        "/svc/account/keys/",
        {"name": "ci", "budget": 50, "budget_period": "day", "allowed": ["text/*"]},
        format="json",
    )
    assert response.status_code == 201, response.content
    created = response.json()
    secret = created["key"]
    assert key_environment(secret) == "live"
    assert created["limits"] == {
        "allowed": ["text/*"],
        "budget": 50,
        "budget_period": "day",
        "rate_per_minute": None,
        "max_in_flight": None,
    }
    listed = alice_api.get("/svc/account/keys/")
    assert listed.status_code == 200 and secret not in listed.content.decode()
    assert {k["name"] for k in listed.json()["keys"]} == {"tests", "ci"}
    assert listed["Cache-Control"] == "no-store"

    new = APIClient()
    new.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert new.get("/svc/account/").status_code == 200
    assert new.get("/svc/account/keys/").status_code == 403  # not a key that manages keys

    revoked = alice_api.delete(f"/svc/account/keys/{created['id']}/")
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert new.get("/svc/account/").status_code == 401


def test_a_client_cannot_see_or_revoke_another_clients_key(alice_api, bob_api):
    bobs = bob_api.key.pk
    assert alice_api.get(f"/svc/account/keys/{bobs}/").status_code == 404
    assert alice_api.delete(f"/svc/account/keys/{bobs}/").status_code == 404
    assert bob_api.get("/svc/account/").status_code == 200


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x", "budget": 0}, "budget"),
        ({"name": "x", "budget": "lots"}, "budget"),
        ({"name": "x", "budget_period": "year"}, "budget_period"),
        ({"name": "x", "allowed": ["no-slash"]}, "allowed"),
        ({"name": "x", "allowed": "text/*"}, "allowed"),
        ({"name": "x", "expires_in_days": 0}, "expires_in_days"),
        ({"name": "x", "max_in_flight": -1}, "max_in_flight"),
    ],
)
def test_bad_key_requests_answer_400_and_create_nothing(alice_api, body, field):
    before = ApiKey.objects.count()
    response = alice_api.post("/svc/account/keys/", body, format="json")
    assert response.status_code == 400, response.content
    assert code(response) == "invalid_inputs" and field in response.json()["error"]["fields"]
    assert ApiKey.objects.count() == before


def test_the_account_shows_each_keys_usage_against_its_limits(alice, alice_api, greet_offer):
    limited = client_with(alice, budget=10, budget_period="week", max_in_flight=5)
    assert limited.post(GREET, inputs(), format="json").status_code == 202
    keys = {k["name"]: k for k in alice_api.get("/svc/account/").json()["keys"]}
    usage = keys["limited"]["usage"]
    assert (usage["spent"], usage["in_flight"]) == (3, 1)
    start = period_start("week", timezone.now())
    assert usage["period_start"] == start.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert keys["limited"]["limits"]["budget"] == 10


# --- per-key limits ------------------------------------------------------------------------


def test_a_key_calls_only_its_allowed_offers(alice, greet_offer, make_offer):
    make_offer(service="image", action="draw", prompt_template="{x}")
    api = client_with(alice, allowed=["text/*"])
    assert api.post(GREET, inputs(), format="json").status_code == 202
    before = stored()
    response = api.post("/svc/image/draw/", {"x": "cat"}, format="json")
    assert response.status_code == 403 and code(response) == "key_not_allowed"
    assert stored() == before


def test_a_key_budget_refuses_what_would_exceed_it_and_holds_nothing(alice, greet_offer):
    api = client_with(alice, budget=7)  # greet costs 3: two fit
    assert [api.post(GREET, inputs(i), format="json").status_code for i in range(2)] == [202, 202]
    before, balance = stored(), alice.account.__class__.objects.get(user=alice).balance
    response = api.post(GREET, inputs(9), format="json")
    assert response.status_code == 402 and code(response) == "key_budget_exceeded"
    assert response.json()["error"]["spent"] == 6
    assert stored() == before
    assert alice.account.__class__.objects.get(user=alice).balance == balance


def test_a_released_hold_gives_the_budget_back(alice, greet_offer):
    api = client_with(alice, budget=3)
    first = api.post(GREET, inputs(1), format="json").json()
    assert api.post(GREET, inputs(2), format="json").status_code == 402
    ended = request_fail(request_id=first["id"], code="x", message="x", from_status="queued")
    request_settle(request=ended)
    assert ApiKey.objects.get(pk=api.key.pk).period_spent == 0
    assert api.post(GREET, inputs(2), format="json").status_code == 202


def test_a_new_period_starts_the_budget_afresh(alice, greet_offer):
    api = client_with(alice, budget=3, budget_period="day")
    assert api.post(GREET, inputs(1), format="json").status_code == 202
    assert api.post(GREET, inputs(2), format="json").status_code == 402
    yesterday = period_start("day", timezone.now()) - timedelta(days=1)
    ApiKey.objects.filter(pk=api.key.pk).update(period_start=yesterday)
    assert api.post(GREET, inputs(2), format="json").status_code == 202
    assert ApiKey.objects.get(pk=api.key.pk).period_spent == 3


def test_max_in_flight_answers_429_until_a_request_settles(alice, greet_offer):
    api = client_with(alice, max_in_flight=2)
    ids = [api.post(GREET, inputs(i), format="json").json()["id"] for i in range(2)]
    before = stored()
    response = api.post(GREET, inputs(3), format="json")
    assert response.status_code == 429 and code(response) == "rate_limited"
    assert response["Retry-After"] == "1"
    assert stored() == before
    ended = request_fail(request_id=ids[0], code="x", message="x", from_status="queued")
    request_settle(request=ended)
    assert ApiKey.objects.get(pk=api.key.pk).in_flight == 1
    assert api.post(GREET, inputs(3), format="json").status_code == 202


def test_a_keys_rate_per_minute_holds(alice, greet_offer):
    api = client_with(alice, rate_per_minute=3)
    codes = [api.post(GREET, inputs(i), format="json").status_code for i in range(5)]
    assert codes == [202, 202, 202, 429, 429]
    other = client_with(alice)  # another key of the same client is not limited by it
    assert other.post(GREET, inputs(7), format="json").status_code == 202


@override_settings(SVC_READ_RATE="3/min")
def test_reads_and_cancels_are_limited_per_key(alice_api, bob_api):
    codes = [alice_api.get("/svc/request/x/").status_code for _ in range(3)]
    codes.append(alice_api.post("/svc/request/x/cancel/").status_code)
    assert codes == [404, 404, 404, 429]
    assert bob_api.get("/svc/request/x/").status_code == 404


@override_settings(SVC_ANON_RATE="4/min")
def test_anonymous_and_bad_key_traffic_is_limited_per_ip(greet_offer):
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION="Bearer nope")
    codes = [api.post(GREET, inputs(), format="json").status_code for _ in range(3)]
    codes.append(APIClient().get("/svc/account/").status_code)  # no key at all: same budget
    codes.append(api.post(GREET, inputs(), format="json").status_code)
    assert codes == [401, 401, 401, 401, 429]
    elsewhere = APIClient(REMOTE_ADDR="10.9.8.7")
    elsewhere.credentials(HTTP_AUTHORIZATION="Bearer nope")
    assert elsewhere.post(GREET, inputs(), format="json").status_code == 401
    assert APIClient().get("/svc/").status_code == 429  # the public catalog counts too

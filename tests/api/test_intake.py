"""POST /svc/<service>/<action>/: validation, dedupe, isolation, and errors that change nothing."""

import json
import threading

import pytest
import redis
from django.test import override_settings

from api.documents import ServiceRequest
from api.services.requests import dedupe_key
from infra.embedded import free_port
from tests.helpers import error_code, queued_job_ids, run_worker

GREET = "/svc/text/greet/"
INPUTS = {"name": "Ada", "place": "Paris"}


def post_raw(api, path, body: bytes, content_type="application/json"):
    return api.generic("POST", path, body, content_type=content_type)


def assert_nothing_stored():
    assert ServiceRequest.objects.count() == 0
    assert queued_job_ids() == []


def test_it_accepts_a_request_and_queues_its_job(alice_api, greet_offer):
    response = alice_api.post(GREET, INPUTS, format="json")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued"
    assert body["kind"] == "offer" and body["service"] == "text" and body["action"] == "greet"
    assert body["inputs"] == INPUTS and body["price"] == 3 and body["results"] == []
    assert body["url"] == f"/svc/request/{body['id']}/"
    assert body["created_at"].endswith("Z") and body["started_at"] is None
    expected_id = dedupe_key(
        user_id=alice_api.user.pk, service="text", action="greet", inputs=INPUTS
    )
    assert body["id"] == expected_id and len(expected_id) == 64
    assert queued_job_ids() == [body["id"]]
    assert ServiceRequest.objects.get(id=body["id"]).prompt == "Hello Ada from Paris"


def test_it_answers_a_duplicate_with_the_same_request(alice_api, greet_offer):
    first = alice_api.post(GREET, {"name": "Ada", "place": "Paris"}, format="json")
    again = post_raw(alice_api, GREET, b'{"place": "Paris",   "name": "Ada"}')
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"]
    assert ServiceRequest.objects.count() == 1
    assert len(queued_job_ids()) == 1


def test_different_inputs_or_users_make_different_requests(alice_api, bob_api, greet_offer):
    a = alice_api.post(GREET, INPUTS, format="json").json()["id"]
    a2 = alice_api.post(GREET, {**INPUTS, "name": "Grace"}, format="json").json()["id"]
    b = bob_api.post(GREET, INPUTS, format="json").json()["id"]
    assert len({a, a2, b}) == 3


def test_it_starts_afresh_after_a_failed_request(alice_api, make_offer):
    make_offer(service="text", action="broken", handler="local.fail")
    first = alice_api.post("/svc/text/broken/", {"x": 1}, format="json").json()
    run_worker()
    assert alice_api.get(first["url"]).json()["status"] == "failed"
    second = alice_api.post("/svc/text/broken/", {"x": 1}, format="json")
    assert second.status_code == 202
    assert second.json()["id"] != first["id"]
    assert alice_api.get(first["url"]).json()["status"] == "failed"  # history is kept


def test_a_succeeded_request_answers_duplicates_until_it_expires(alice_api, make_offer):
    make_offer(service="text", action="short", expiration=3600)
    first = alice_api.post("/svc/text/short/", {"x": "a"}, format="json").json()
    assert first["expires_at"] is not None
    run_worker()
    assert alice_api.post("/svc/text/short/", {"x": "a"}, format="json").status_code == 200
    ServiceRequest.objects(id=first["id"]).update_one(
        set__expires_at=ServiceRequest.objects.get(id=first["id"]).created_at
    )
    renewed = alice_api.post("/svc/text/short/", {"x": "a"}, format="json")
    assert renewed.status_code == 202 and renewed.json()["id"] != first["id"]


def test_a_client_sees_only_its_own_requests(alice_api, bob_api, greet_offer):
    created = alice_api.post(GREET, INPUTS, format="json").json()
    assert alice_api.get(created["url"]).status_code == 200
    response = bob_api.get(created["url"])
    assert response.status_code == 404 and error_code(response) == "not_found"
    missing = alice_api.get("/svc/request/" + "0" * 64 + "/")
    assert missing.status_code == 404 and error_code(missing) == "not_found"


@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'"Ada"', 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b'{"name": "Ada"}', 400, "missing_inputs"),
        (b"{}", 400, "missing_inputs"),
        (b'{"name": "Ada", "place": "Paris", "extra": 1}', 400, "unknown_inputs"),
        (b'{"name": {"a": 1}, "place": "Paris"}', 400, "invalid_inputs"),
        (b'{"name": [1], "place": null}', 400, "invalid_inputs"),
    ],
)
def test_it_rejects_bad_bodies_and_changes_nothing(alice_api, greet_offer, body, status, code):
    response = post_raw(alice_api, GREET, body)
    assert response.status_code == status
    assert error_code(response) == code
    assert_nothing_stored()


def test_it_names_the_fields_at_fault(alice_api, greet_offer):
    missing = alice_api.post(GREET, {"name": "Ada"}, format="json").json()["error"]
    assert missing["fields"] == ["place"]
    unknown = alice_api.post(GREET, {**INPUTS, "zz": 1, "aa": 2}, format="json").json()["error"]
    assert unknown["fields"] == ["aa", "zz"]


def test_it_parses_json_whatever_the_content_type(alice_api, greet_offer):
    response = post_raw(
        alice_api,
        GREET,
        json.dumps(INPUTS).encode(),
        content_type="application/x-www-form-urlencoded",
    )
    assert response.status_code == 202


@pytest.mark.parametrize("header", [None, "Token nope", "Bearer x", "Token"])
def test_it_requires_a_valid_token(anon_api, greet_offer, header):
    if header:
        anon_api.credentials(HTTP_AUTHORIZATION=header)
    response = anon_api.post(GREET, INPUTS, format="json")
    assert response.status_code == 401
    assert error_code(response) == "not_authenticated"
    assert_nothing_stored()


@pytest.mark.parametrize(
    "path", ["/svc/text/nope/", "/svc/nope/greet/", "/svc/text/", "/svc/a/b/c/", "/nowhere"]
)
def test_unknown_endpoints_answer_json_404(alice_api, greet_offer, path):
    response = alice_api.post(path, INPUTS, format="json")
    assert response.status_code == 404
    assert error_code(response) == "not_found"


def test_an_inactive_offer_answers_404(alice_api, greet_offer):
    greet_offer.is_active = False
    greet_offer.save()
    response = alice_api.post(GREET, INPUTS, format="json")
    assert response.status_code == 404 and error_code(response) == "not_found"


def test_wrong_methods_answer_json_405(alice_api, greet_offer):
    response = alice_api.get(GREET)
    assert response.status_code == 405 and error_code(response) == "method_not_allowed"
    response = alice_api.delete("/svc/request/abc/")
    assert response.status_code == 405


@override_settings(SVC_MAX_BODY_BYTES=64)
def test_it_rejects_a_body_over_the_limit(alice_api, greet_offer):
    response = alice_api.post(GREET, {"name": "A" * 100, "place": "P"}, format="json")
    assert response.status_code == 413
    assert error_code(response) == "payload_too_large"
    assert_nothing_stored()


@override_settings(SVC_INTAKE_RATE="2/min")
def test_it_rate_limits_per_client(alice_api, bob_api, greet_offer):
    codes = [
        alice_api.post(GREET, {"name": str(i), "place": "P"}, format="json").status_code
        for i in range(3)
    ]
    assert codes == [202, 202, 429]
    limited = alice_api.post(GREET, {"name": "x", "place": "P"}, format="json")
    assert error_code(limited) == "rate_limited"
    assert int(limited["Retry-After"]) > 0
    assert bob_api.post(GREET, INPUTS, format="json").status_code == 202
    assert ServiceRequest.objects.count() == 3


@override_settings(SVC_INTAKE_RATE="20/hour")
def test_the_rate_limit_is_exact_under_concurrency(alice):
    """Every API thread and process shares one atomic count: 50 at once, exactly 20 pass."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from api.http.throttling import IntakeThrottle

    request = SimpleNamespace(user=alice)
    barrier = threading.Barrier(50)

    def attempt(_):
        throttle = IntakeThrottle()  # one per request, as DRF makes them
        barrier.wait()
        return throttle.allow_request(request, None), throttle.wait()

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(attempt, range(50)))
    assert sum(allowed for allowed, _ in outcomes) == 20
    waits = [wait for allowed, wait in outcomes if not allowed]
    assert len(waits) == 30 and all(0 < wait <= 3600 for wait in waits)


def test_it_answers_503_and_keeps_nothing_live_when_redis_is_down(
    alice_api, greet_offer, monkeypatch
):
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    monkeypatch.setattr("executor.queues.redis_connection", lambda: dead)
    response = alice_api.post(GREET, INPUTS, format="json")
    assert response.status_code == 503 and error_code(response) == "unavailable"
    (stored,) = ServiceRequest.objects
    assert stored.status == "failed" and stored.error["code"] == "unavailable"


def test_weird_request_ids_answer_404_not_500(alice_api):
    for request_id in ["x" * 500, "%00", "..", "a b", "$where"]:
        response = alice_api.get(f"/svc/request/{request_id}/")
        assert response.status_code == 404, request_id


def test_the_catalog_lists_offers_with_their_inputs(anon_api, greet_offer):
    body = anon_api.get("/svc/").json()
    assert body["offers"] == [
        {
            "service": "text",
            "action": "greet",
            "url": GREET,
            "description": "",
            "inputs": ["name", "place"],
            "price": 3,
            "create_qty": 1,
            "expiration": None,
        }
    ]


def test_healthz_reports_every_store(anon_api, db):
    response = anon_api.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"sql": "ok", "mongo": "ok", "redis": "ok"},
    }


def test_healthz_answers_503_when_a_store_is_down(anon_api, db, monkeypatch):
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    monkeypatch.setattr("infra.stores.redis_connection", lambda: dead)
    response = anon_api.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["redis"].startswith("error")

"""`Idempotency-Key` on client POSTs (api/http/idempotency.py): replay, conflict, in progress,
what is not kept, keys per client, secrets never in Redis in plaintext."""

import io
import json
import threading

import pytest
from django.db import connection
from django.test import override_settings
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from api.documents import ServiceRequest
from api.http import views
from api.http.idempotency import IN_PROGRESS_SECONDS, REDIS_PREFIX
from api.models import ServiceDeal, ServiceDealItem
from api.services.accounts import account_grant
from infra.stores import redis_connection
from tests.helpers import error_code
from tests.live import wait_until

pytestmark = pytest.mark.django_db

GREET = "/svc/text/greet/"  # inputs name, place; price 3
INPUTS = {"name": "Ada", "place": "Paris"}
KEY = "order-7f3c2a"


def post(api, path, body, key=KEY, **extra):
    """POST `body` (a dict as JSON, or raw bytes) with `Idempotency-Key: key` (None: none)."""
    if key is not None:
        extra["HTTP_IDEMPOTENCY_KEY"] = key
    if isinstance(body, bytes):
        return api.generic("POST", path, body, content_type="application/json", **extra)
    return api.post(path, body, format="json", **extra)


def replayed(response) -> bool:
    return response.get("Idempotent-Replayed") == "true"


def entries() -> dict[bytes, bytes]:
    client = redis_connection()
    return {key: client.get(key) for key in client.scan_iter(match=REDIS_PREFIX + "*")}


def holds(api) -> list[dict]:
    return [t for t in api.get("/svc/account/").json()["transactions"] if t["kind"] == "hold"]


def outcome_count(outcome: str) -> float:
    return REGISTRY.get_sample_value("svc_idempotency_total", {"outcome": outcome}) or 0


@pytest.fixture
def intake_calls(monkeypatch) -> list:
    """Each call of the offer intake service the view makes, recorded."""
    calls, real = [], views.intake_submit

    def counted(**kwargs):
        calls.append(kwargs["inputs"])
        return real(**kwargs)

    monkeypatch.setattr(views, "intake_submit", counted)
    return calls


# --- replay ----------------------------------------------------------------------------------


def test_a_replay_answers_the_first_answer_without_running_the_view(
    alice_api, greet_offer, intake_calls
):
    stored_before, replayed_before = outcome_count("stored"), outcome_count("replayed")
    first = post(alice_api, GREET, INPUTS)
    again = post(alice_api, GREET, b'{"place": "Paris",  "name": "Ada"}')  # same JSON
    assert first.status_code == 202 and not replayed(first)
    # Without the key this would be the dedupe's 200: the 202 is the first answer replayed.
    assert again.status_code == 202 and replayed(again)
    assert again.content == first.content
    assert again["Content-Type"] == first["Content-Type"] == "application/json"
    assert again["Cache-Control"] == "no-store"
    assert intake_calls == [INPUTS]
    assert ServiceRequest.objects.count() == 1
    assert [h["amount"] for h in holds(alice_api)] == [3]
    assert alice_api.get("/svc/account/").json()["held"] == 3
    assert outcome_count("stored") == stored_before + 1
    assert outcome_count("replayed") == replayed_before + 1


def test_a_deal_intake_is_replayed(alice_api, greet_offer, make_offer):
    hello = make_offer("text", "hello", prompt_template="Hello {name}", price=3)
    sign = make_offer("text", "sign", prompt_template="by {author}", price=1)
    deal = ServiceDeal.objects.create(name="duo")
    ServiceDealItem.objects.create(deal=deal, offer=hello, position=0, pipeline="")
    ServiceDealItem.objects.create(deal=deal, offer=sign, position=1, pipeline="")
    body = {"inputs": {"name": "Ada", "author": "Bo"}}
    first = post(alice_api, "/svc/deal/duo/", body)
    again = post(alice_api, "/svc/deal/duo/", body)
    assert first.status_code == again.status_code == 202 and replayed(again)
    assert again.json() == first.json() and first.json()["kind"] == "deal"
    assert ServiceRequest.objects(kind="deal").count() == 1


def test_a_cancel_is_replayed_instead_of_answering_not_cancelable(alice_api, greet_offer):
    created = post(alice_api, GREET, INPUTS, key=None).json()
    cancel = f"/svc/request/{created['id']}/cancel/"
    first = post(alice_api, cancel, b"", key="cancel-1")
    again = post(alice_api, cancel, b"", key="cancel-1")
    assert first.status_code == again.status_code == 200 and replayed(again)
    assert again.json()["status"] == "canceled"
    other_key = post(alice_api, cancel, b"", key="cancel-2")  # a new key runs the view
    assert other_key.status_code == 409 and error_code(other_key) == "not_cancelable"


def test_a_402_is_replayed_even_once_the_client_can_pay(alice, alice_api, make_offer):
    make_offer(service="t", action="dear", price=1001)
    first = post(alice_api, "/svc/t/dear/", {"x": 1})
    assert first.status_code == 402 and error_code(first) == "insufficient_credits"
    account_grant(user=alice, amount=5000, note="top-up")
    again = post(alice_api, "/svc/t/dear/", {"x": 1})
    assert again.status_code == 402 and replayed(again) and again.content == first.content
    assert ServiceRequest.objects.count() == 0
    assert post(alice_api, "/svc/t/dear/", {"x": 1}, key="another").status_code == 202


def test_a_new_key_is_replayed_with_its_secret_and_redis_never_holds_it(alice_api):
    first = post(alice_api, "/svc/account/keys/", {"name": "ci"}, key="make-ci-key")
    again = post(alice_api, "/svc/account/keys/", {"name": "ci"}, key="make-ci-key")
    assert first.status_code == again.status_code == 201 and replayed(again)
    secret = first.json()["key"]
    assert again.json()["key"] == secret and secret.startswith("svc_")
    names = [k["name"] for k in alice_api.get("/svc/account/keys/").json()["keys"]]
    assert sorted(names) == ["ci", "tests"]  # one key made, not two
    assert len(entries()) == 1
    for name, value in every_redis_value():
        for plaintext in (secret, secret[-20:], "make-ci-key", '"name":"ci"'):
            assert plaintext.encode() not in name + b"\0" + value, (name, plaintext)


def every_redis_value():
    """(key, its value as bytes) for every key of the database, whatever its type."""
    client = redis_connection()
    for name in client.scan_iter():
        kind = client.type(name)
        if kind == b"string":
            yield name, client.get(name)
        elif kind == b"hash":
            yield name, b"\0".join(b"\0".join(pair) for pair in client.hgetall(name).items())
        elif kind == b"list":
            yield name, b"\0".join(client.lrange(name, 0, -1))
        elif kind == b"set":
            yield name, b"\0".join(client.smembers(name))
        elif kind == b"zset":
            yield name, b"\0".join(client.zrange(name, 0, -1))
        else:
            yield name, client.dump(name)


# --- conflict --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body",
    [
        (GREET, {"name": "Grace", "place": "Paris"}),  # another body
        ("/svc/text/other/", {"x": "Ada"}),  # another path
        (GREET + "?webhook_events=start", INPUTS),  # another query string
    ],
    ids=["body", "path", "query"],
)
def test_the_same_key_for_another_request_is_a_conflict(
    alice_api, greet_offer, make_offer, intake_calls, path, body
):
    make_offer(service="text", action="other")
    conflicts = outcome_count("conflict")
    assert post(alice_api, GREET, INPUTS).status_code == 202
    response = post(alice_api, path, body)
    assert response.status_code == 409 and error_code(response) == "idempotency_conflict"
    assert not replayed(response)
    assert intake_calls == [INPUTS] and ServiceRequest.objects.count() == 1
    assert outcome_count("conflict") == conflicts + 1


def test_a_chunked_body_is_fingerprinted_and_still_read_by_the_view(alice_api, greet_offer):
    def chunked(body: dict):
        environ = {"wsgi.input": io.BytesIO(json.dumps(body).encode())}
        environ.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True})
        return post(alice_api, GREET, b"", **environ)

    first = chunked(INPUTS)
    assert first.status_code == 202, first.content
    assert first.json()["inputs"] == INPUTS
    assert replayed(chunked(INPUTS))
    other = chunked({"name": "Grace", "place": "Paris"})
    assert other.status_code == 409 and error_code(other) == "idempotency_conflict"


# --- in progress -----------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)  # the first POST's thread has its own connection
def test_a_key_still_in_use_answers_in_progress(alice_api, greet_offer, monkeypatch):
    entered, release, real = threading.Event(), threading.Event(), views.intake_submit

    def held(**kwargs):
        entered.set()
        release.wait(30)
        return real(**kwargs)

    monkeypatch.setattr(views, "intake_submit", held)
    first = {}

    def run_first():
        try:
            first["response"] = post(twin(alice_api), GREET, INPUTS)
        finally:
            connection.close()

    thread = threading.Thread(target=run_first)
    thread.start()
    try:
        wait_until(entered.is_set, timeout=10, what="the first POST inside the intake")
        (claim,) = entries()
        assert 0 < redis_connection().ttl(claim) <= IN_PROGRESS_SECONDS
        during = post(alice_api, GREET, INPUTS)
        assert during.status_code == 409 and error_code(during) == "idempotency_in_progress"
        assert during["Retry-After"] == "1"
    finally:
        release.set()
        thread.join(30)
    assert first["response"].status_code == 202
    after = post(alice_api, GREET, INPUTS)
    assert after.status_code == 202 and replayed(after)
    assert after.json()["id"] == first["response"].json()["id"]


def twin(api) -> APIClient:
    """A client of its own with `api`'s credentials (a test client is not thread-safe)."""
    client = APIClient()
    client.credentials(**api._credentials)
    return client


# --- what is not kept ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path, body, status, code",
    [
        (GREET, {"name": "Ada"}, 400, "missing_inputs"),
        (GREET, b"{not json", 400, "invalid_json"),
        ("/svc/text/nothing/", INPUTS, 404, "not_found"),
    ],
    ids=["missing_inputs", "invalid_json", "not_found"],
)
def test_a_refused_request_is_not_kept_so_the_key_can_be_retried(
    alice_api, greet_offer, path, body, status, code
):
    refused = post(alice_api, path, body)
    assert refused.status_code == status and error_code(refused) == code
    assert entries() == {}
    corrected = post(alice_api, GREET, INPUTS)
    assert corrected.status_code == 202 and not replayed(corrected)


def test_a_crash_releases_the_key(alice_api, greet_offer, monkeypatch):
    real = views.intake_submit

    def broken(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(views, "intake_submit", broken)
    with pytest.raises(RuntimeError):
        post(alice_api, GREET, INPUTS)
    assert entries() == {}
    monkeypatch.setattr(views, "intake_submit", real)
    assert post(alice_api, GREET, INPUTS).status_code == 202


def test_a_rate_limited_post_claims_nothing(alice_api, greet_offer):
    with override_settings(SVC_INTAKE_RATE="1/hour"):
        assert post(alice_api, GREET, INPUTS, key="first").status_code == 202
        limited = post(alice_api, GREET, INPUTS, key="second")
    assert limited.status_code == 429 and error_code(limited) == "rate_limited"
    assert len(entries()) == 1  # only "first"'s answer


# --- keys, their form and their lifetime -----------------------------------------------------


def test_keys_are_per_client(alice_api, bob_api, greet_offer):
    for_alice = post(alice_api, GREET, INPUTS)
    for_bob = post(bob_api, GREET, INPUTS)
    assert for_alice.status_code == for_bob.status_code == 202
    assert not replayed(for_bob)
    assert for_alice.json()["id"] != for_bob.json()["id"]
    assert len(entries()) == 2


@override_settings(SVC_IDEMPOTENCY_TTL=1234)
def test_an_answer_is_kept_for_the_ttl_under_a_hashed_name(alice_api, greet_offer):
    assert post(alice_api, GREET, INPUTS).status_code == 202
    (name,) = entries()
    assert 1224 < redis_connection().ttl(name) <= 1234
    assert KEY.encode() not in name


@pytest.mark.parametrize(
    "key", ["", "x" * 256, "caf\u00e9", "tab\there", "nul\x00"], ids=lambda k: repr(k)[:12]
)
def test_an_invalid_key_is_refused(alice_api, greet_offer, key):
    response = post(alice_api, GREET, INPUTS, key=key)
    assert response.status_code == 400 and error_code(response) == "invalid_idempotency_key"
    assert ServiceRequest.objects.count() == 0 and entries() == {}


@pytest.mark.parametrize("key", ["x" * 255, "a", " spaces and ~!@#$%^&*() "])
def test_any_printable_ascii_key_up_to_255_is_taken(alice_api, greet_offer, key):
    assert post(alice_api, GREET, INPUTS, key=key).status_code == 202
    assert replayed(post(alice_api, GREET, INPUTS, key=key))


def test_without_the_header_nothing_is_kept_and_other_methods_ignore_it(alice_api, greet_offer):
    created = post(alice_api, GREET, INPUTS, key=None)
    assert created.status_code == 202 and entries() == {}
    read = alice_api.get(created.json()["url"], HTTP_IDEMPOTENCY_KEY="\x00 not even valid")
    assert read.status_code == 200 and entries() == {}

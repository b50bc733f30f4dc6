"""Hostile input (issue 15, part 4): every hostile body gets a clean 400 JSON error with
nothing stored (MongoDB), held (the SQL ledger) or queued (Redis), never a 500; identical
POSTs racing an intake never answer with a request that is then discarded; a result that is
not strict JSON fails its request instead of being charged."""

import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.test import override_settings
from rest_framework.test import APIClient

from api.documents import ServiceRequest
from api.models import Account, LedgerEntry, ServiceDeal, ServiceDealItem
from api.services import deals, intake
from api.services.accounts import account_hold
from api.services.requests import request_discard, request_submit
from executor.queues import route_for_handler
from tests.helpers import error_code, queued_job_ids, run_worker
from tests.live import wait_until

GREET = "/svc/text/greet/"  # inputs name, place; price 3
DUO = "/svc/deal/duo/"  # inputs name, author; price 3 + 1


def nested(depth: int, inner: bytes = b'"x"') -> bytes:
    """`depth` arrays, one inside the other, around `inner`."""
    return b"[" * depth + inner + b"]" * depth


def many_inputs(count: int) -> bytes:
    return json.dumps({f"i{n}": "v" for n in range(count)}).encode()


def offer_body(name: bytes) -> bytes:
    """A greet body whose `name` is the raw JSON `name`."""
    return b'{"name": ' + name + b', "place": "Paris"}'


def deal_body(name: bytes) -> bytes:
    return b'{"inputs": {"name": ' + name + b', "author": "Bo"}}'


# Raw JSON values put where an input's value goes, with the error code they answer.
HOSTILE_VALUES = [
    ("nan", b"NaN", "invalid_json"),
    ("infinity", b"Infinity", "invalid_json"),
    ("minus-infinity", b"-Infinity", "invalid_json"),
    ("1e400", b"1e400", "invalid_json"),
    ("minus-1e400", b"-1e400", "invalid_json"),
    ("int-beyond-64-bits", b"18446744073709551616", "invalid_json"),
    ("nan-in-an-array", b"[1, NaN]", "invalid_json"),
    ("lone-high-surrogate", b'"\\ud800"', "invalid_json"),
    ("lone-low-surrogate", b'"a\\udfff"', "invalid_json"),
    ("reversed-surrogate-pair", b'"\\udc00\\ud800"', "invalid_json"),
    ("nul", b'"a\\u0000b"', "invalid_inputs"),
    ("depth-33", nested(32), "invalid_json"),  # in the body's object: 33 deep (a deal's: 34)
    ("depth-10000", nested(10_000), "invalid_json"),
    ("too-long-string", json.dumps("A" * 100_001).encode(), "invalid_inputs"),
    ("an-object", b'{"a": 1}', "invalid_inputs"),
]

# Whole bodies, for offers and deals alike.
HOSTILE_BODIES = [
    ("array", b"[1, 2]", "invalid_json"),
    ("string", b'"Ada"', "invalid_json"),
    ("number", b"3", "invalid_json"),
    ("null", b"null", "invalid_json"),
    ("true", b"true", "invalid_json"),
    ("objects-10000-deep", b'{"a": ' * 10_000 + b"1" + b"}" * 10_000, "invalid_json"),
    ("arrays-10000-deep", nested(10_000), "invalid_json"),
    ("surrogate-in-a-key", b'{"\\ud800": 1}', "invalid_json"),
    ("invalid-utf-8", b'{"name": "\xff"}', "invalid_json"),
    ("overlong-utf-8", b'{"name": "\xc0\xaf"}', "invalid_json"),
    ("utf-8-encoded-surrogate", b'{"name": "\xed\xa0\x80"}', "invalid_json"),
    ("truncated-utf-8", b'{"name": "\xe2\x82"}', "invalid_json"),
    ("utf-8-bom", b'\xef\xbb\xbf{"name": "Ada"}', "invalid_json"),
    ("utf-16", '{"name": "Ada"}'.encode("utf-16"), "invalid_json"),
    ("not-json", b"{name: Ada}", "invalid_json"),
]


def post_raw(api, path: str, body: bytes, **extra):
    return api.generic("POST", path, body, content_type="application/json", **extra)


def state(user) -> tuple:
    """What a rejected POST must leave as it was: request documents, ledger rows, the
    account's balance and held credits, and the RQ queues."""
    account = Account.objects.get(user=user)
    return (
        ServiceRequest.objects.count(),
        LedgerEntry.objects.count(),
        account.balance,
        account.held,
        queued_job_ids(),
    )


def twin(api) -> APIClient:
    """A client of its own with `api`'s credentials (a test client is not thread-safe)."""
    client = APIClient()
    client.credentials(**api._credentials)
    return client


@pytest.fixture
def duo(greet_offer, make_offer) -> ServiceDeal:
    """A deal of two parallel items: hello (`name`) and sign (`author`); greet_offer too."""
    hello = make_offer("text", "hello", prompt_template="Hello {name}", price=3)
    sign = make_offer("text", "sign", prompt_template="by {author}", price=1)
    deal = ServiceDeal.objects.create(name="duo")
    ServiceDealItem.objects.create(deal=deal, offer=hello, position=0, pipeline="")
    ServiceDealItem.objects.create(deal=deal, offer=sign, position=1, pipeline="")
    return deal


def assert_rejected(response, status: int, code: str, before: tuple, user) -> None:
    assert response.status_code == status, response.content[:300]
    assert error_code(response) == code
    assert state(user) == before


# --- bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "code"), [case[1:] for case in HOSTILE_VALUES], ids=[c[0] for c in HOSTILE_VALUES]
)
def test_a_hostile_offer_input_is_a_400_that_changes_nothing(
    alice, alice_api, greet_offer, value, code
):
    before = state(alice)
    assert_rejected(post_raw(alice_api, GREET, offer_body(value)), 400, code, before, alice)


@pytest.mark.parametrize(
    ("value", "code"), [case[1:] for case in HOSTILE_VALUES], ids=[c[0] for c in HOSTILE_VALUES]
)
def test_a_hostile_deal_input_is_a_400_that_changes_nothing(alice, alice_api, duo, value, code):
    before = state(alice)
    assert_rejected(post_raw(alice_api, DUO, deal_body(value)), 400, code, before, alice)


@pytest.mark.parametrize("path", [GREET, DUO])
@pytest.mark.parametrize(
    ("body", "code"), [case[1:] for case in HOSTILE_BODIES], ids=[c[0] for c in HOSTILE_BODIES]
)
def test_a_hostile_body_is_a_400_that_changes_nothing(alice, alice_api, duo, path, body, code):
    before = state(alice)
    assert_rejected(post_raw(alice_api, path, body), 400, code, before, alice)


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": {"name": "Ada", "author": "Bo"}, "addons": ["\\ud800"]}',
        b'{"inputs": {"name": "Ada", "author": "Bo", "\\udfff": 1}}',
        b'{"inputs": {"name": "Ada", "author": "Bo"}, "\\ud800": 1}',
    ],
    ids=["in-an-addon", "in-an-input-name", "in-a-body-key"],
)
def test_a_lone_surrogate_anywhere_in_a_deal_body_is_a_400(alice, alice_api, duo, body):
    """Names are quoted back in error messages: a lone surrogate there made the error a 500."""
    before = state(alice)
    assert_rejected(post_raw(alice_api, DUO, body), 400, "invalid_json", before, alice)


def test_too_many_inputs_are_refused_before_they_are_listed(alice, alice_api, duo):
    before = state(alice)
    response = post_raw(alice_api, GREET, many_inputs(64))
    assert response.status_code == 400 and error_code(response) == "missing_inputs"
    response = post_raw(alice_api, GREET, many_inputs(65))
    assert_rejected(response, 400, "invalid_inputs", before, alice)
    assert response.json()["error"]["limit"] == 64
    deal = b'{"inputs": ' + many_inputs(65) + b"}"
    assert_rejected(post_raw(alice_api, DUO, deal), 400, "invalid_inputs", before, alice)


def test_32_deep_passes_the_depth_limit_and_33_does_not(alice_api, greet_offer):
    at_limit = post_raw(alice_api, GREET, offer_body(nested(31)))  # the object and 31 arrays
    assert error_code(at_limit) == "invalid_inputs"  # an input must be a scalar all the same
    over = post_raw(alice_api, GREET, offer_body(nested(32)))
    assert error_code(over) == "invalid_json"
    assert "nested deeper than 32 levels" in over.json()["error"]["message"]


def test_the_error_names_the_inputs_at_fault(alice_api, greet_offer):
    error = post_raw(alice_api, GREET, b'{"name": "a\\u0000", "place": "P"}').json()["error"]
    assert error["code"] == "invalid_inputs" and error["fields"] == ["name"]
    error = post_raw(alice_api, GREET, offer_body(b"[1, NaN]")).json()["error"]
    assert error["code"] == "invalid_json" and "$.name[1]" in error["message"]


@override_settings(SVC_MAX_INPUT_CHARS=5, SVC_MAX_JSON_DEPTH=2)
def test_the_limits_are_settings(alice, alice_api, duo):
    before = state(alice)
    assert post_raw(alice_api, GREET, offer_body(b'"Adaaa"')).status_code == 202
    response = post_raw(alice_api, GREET, offer_body(b'"Adaaaa"'))
    assert response.status_code == 400 and error_code(response) == "invalid_inputs"
    assert post_raw(alice_api, DUO, deal_body(b'"Ada"')).status_code == 202  # 2 deep
    response = post_raw(alice_api, DUO, deal_body(b'["Ada"]'))  # 3 deep
    assert response.status_code == 400 and error_code(response) == "invalid_json"
    assert state(alice)[0] == before[0] + 1 + 3  # the greet, the deal and its two items


@pytest.mark.parametrize(
    "name",
    [b'"\\ud83d\\ude00"', '"\N{GRINNING FACE}"'.encode(), b'"caf\\u00e9"', b"1.5e300", b"-0"],
    ids=["escaped-pair", "raw-emoji", "escaped-accent", "big-finite", "minus-zero"],
)
def test_strict_json_that_is_valid_is_accepted_and_readable(alice_api, greet_offer, name):
    created = post_raw(alice_api, GREET, offer_body(name))
    assert created.status_code == 202, created.content
    read = alice_api.get(created.json()["url"])
    assert read.status_code == 200 and read.json()["inputs"]["name"] == json.loads(name)


# --- chunked bodies (gunicorn's side: tests/system/test_hostile_http.py) --------------------


def chunked(body: bytes, *, terminated: bool) -> dict:
    """The WSGI environ of a chunked request: no Content-Length, the body in wsgi.input."""
    environ = {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input": io.BytesIO(body)}
    if terminated:
        environ["wsgi.input_terminated"] = True
    return environ


def test_a_chunked_body_is_read_when_the_server_terminates_the_input(alice_api, greet_offer):
    body = b'{"name": "Ada", "place": "Paris"}'
    response = post_raw(alice_api, GREET, b"", **chunked(body, terminated=True))
    assert response.status_code == 202, response.content
    assert response.json()["inputs"] == {"name": "Ada", "place": "Paris"}


def test_a_chunked_body_the_server_cannot_terminate_is_411(alice, alice_api, greet_offer):
    before = state(alice)
    body = b'{"name": "Ada", "place": "Paris"}'
    response = post_raw(alice_api, GREET, b"", **chunked(body, terminated=False))
    assert_rejected(response, 411, "length_required", before, alice)


@override_settings(SVC_MAX_BODY_BYTES=64)
def test_a_chunked_body_over_the_limit_is_413(alice, alice_api, greet_offer):
    before = state(alice)
    body = json.dumps({"name": "A" * 100, "place": "P"}).encode()
    response = post_raw(alice_api, GREET, b"", **chunked(body, terminated=True))
    assert_rejected(response, 413, "payload_too_large", before, alice)


# --- identical POSTs racing an intake -------------------------------------------------------


def post_at_once(api, path: str, body: dict, count: int) -> list:
    """`count` identical POSTs from as many threads, released together."""
    barrier = threading.Barrier(count)

    def one(_):
        client = twin(api)
        barrier.wait()
        try:
            response = client.post(path, body, format="json")
            return response.status_code, response.json()
        finally:
            connection.close()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


RACES = [
    (GREET, {"name": "Ada", "place": "Paris"}, 3),
    (DUO, {"inputs": {"name": "Ada", "author": "Bo"}}, 4),
]


@pytest.mark.django_db(transaction=True)  # each POST's thread holds with its own connection
@pytest.mark.parametrize(("path", "body", "price"), RACES, ids=["offer", "deal"])
def test_identical_posts_on_a_short_balance_all_get_402(alice, alice_api, duo, path, body, price):
    Account.objects.filter(user=alice).update(balance=price - 1)
    before = state(alice)
    outcomes = post_at_once(alice_api, path, body, 30)
    assert [status for status, _ in outcomes] == [402] * 30
    assert all(answer["error"]["code"] == "insufficient_credits" for _, answer in outcomes)
    assert state(alice) == before


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(("path", "body", "price"), RACES, ids=["offer", "deal"])
def test_identical_posts_with_credits_make_one_request_charged_once(
    alice, alice_api, duo, path, body, price
):
    outcomes = post_at_once(alice_api, path, body, 30)
    statuses = sorted(status for status, _ in outcomes)
    assert statuses == [200] * 29 + [202]
    ids = {answer["id"] for _, answer in outcomes}
    assert len(ids) == 1
    [request_id] = ids
    kinds = LedgerEntry.objects.filter(request_id=request_id).values_list("kind", flat=True)
    assert list(kinds) == ["hold"] and LedgerEntry.objects.filter(kind="hold").count() == 1
    account = Account.objects.get(user=alice)
    assert (account.balance, account.held) == (1000 - price, price)
    assert alice_api.get(f"/svc/request/{request_id}/").status_code == 200


def stalled_intake(user, offer) -> ServiceRequest:
    """Step 1 of an intake that has not held yet: the request document, and no hold."""
    resource, queue = route_for_handler(offer.handler_id)
    request, created = request_submit(
        user_id=user.pk,
        offer=offer,
        inputs={"name": "Ada", "place": "Paris"},
        queue=queue,
        resource=resource,
    )
    assert created
    return request


@pytest.fixture
def ledger_looks(monkeypatch) -> list[str]:
    """The request ids a duplicate POST looked for in the ledger, in order (the real lookup)."""
    looks: list[str] = []
    real = intake.account_hold_exists

    def looking(*, request_id: str) -> bool:
        looks.append(request_id)
        return real(request_id=request_id)

    monkeypatch.setattr(intake, "account_hold_exists", looking)
    return looks


def post_in_background(api, path: str, body: dict):
    """Start a POST in a thread; returns a function that waits for its (status, body)."""
    outcome = {}

    def run():
        try:
            response = twin(api).post(path, body, format="json")
            outcome["answer"] = response.status_code, response.json()
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()

    def result():
        thread.join(30)
        return outcome["answer"]

    return result


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_waits_for_the_hold_then_answers_with_the_request(
    alice, alice_api, greet_offer, ledger_looks
):
    request = stalled_intake(alice, greet_offer)
    result = post_in_background(alice_api, GREET, {"name": "Ada", "place": "Paris"})
    wait_until(lambda: len(ledger_looks) >= 2, timeout=10, what="the POST waiting for a hold")
    account_hold(user_id=alice.pk, request_id=request.id, amount=3)
    status, body = result()
    assert (status, body["id"]) == (200, request.id)
    assert LedgerEntry.objects.filter(kind="hold").count() == 1


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_of_a_discarded_request_submits_again_and_gets_its_own_402(
    alice, alice_api, greet_offer, ledger_looks
):
    Account.objects.filter(user=alice).update(balance=2)
    request = stalled_intake(alice, greet_offer)
    result = post_in_background(alice_api, GREET, {"name": "Ada", "place": "Paris"})
    wait_until(lambda: len(ledger_looks) >= 2, timeout=10, what="the POST waiting for a hold")
    request_discard(request_id=request.id)  # that intake's hold failed: 402 there
    status, body = result()
    assert (status, body["error"]["code"]) == (402, "insufficient_credits")
    assert ServiceRequest.objects.count() == 0 and queued_job_ids() == []
    assert LedgerEntry.objects.filter(kind="hold").count() == 0


@pytest.mark.django_db(transaction=True)
def test_a_duplicate_of_a_discarded_deal_submits_again_and_is_accepted(
    alice, alice_api, duo, ledger_looks
):
    body = {"inputs": {"name": "Ada", "author": "Bo"}}
    plan = deals.deal_plan(deal=duo, body=body)
    parent, created = deals.deal_insert(user_id=alice.pk, plan=plan)
    assert created
    result = post_in_background(alice_api, DUO, body)
    wait_until(lambda: len(ledger_looks) >= 2, timeout=10, what="the POST waiting for a hold")
    request_discard(request_id=parent.id)
    status, answer = result()
    assert (status, answer["id"]) == (202, parent.id)  # its own insert: the same id again
    assert LedgerEntry.objects.filter(request_id=parent.id, kind="hold").count() == 1


def test_a_duplicate_still_undecided_at_the_deadline_is_503(
    alice, alice_api, greet_offer, monkeypatch
):
    monkeypatch.setattr("api.defaults.DUPLICATE_WAIT", 0.3)
    request = stalled_intake(alice, greet_offer)
    before = state(alice)
    response = alice_api.post(GREET, {"name": "Ada", "place": "Paris"}, format="json")
    assert_rejected(response, 503, "unavailable", before, alice)
    assert ServiceRequest.objects.get(id=request.id).status == "queued"  # not this POST's


def test_a_duplicate_of_a_held_request_answers_at_once(alice_api, greet_offer, ledger_looks):
    first = alice_api.post(GREET, {"name": "Ada", "place": "Paris"}, format="json")
    again = alice_api.post(GREET, {"place": "Paris", "name": "Ada"}, format="json")
    assert (first.status_code, again.status_code) == (202, 200)
    assert ledger_looks == [first.json()["id"]]  # one lookup, on the duplicate path only


# --- results that are not strict JSON -------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [b'{"x": NaN}', b'{"x": [Infinity]}', b'{"x": 1e400}', b'{"x": "\\ud800"}', nested(70, b"1")],
    ids=["nan", "infinity", "1e400", "lone-surrogate", "70-deep"],
)
def test_a_result_that_is_not_strict_json_fails_and_is_not_charged(
    alice, alice_api, make_offer, json_stub, answer
):
    make_offer("text", "hook", handler="http.post", params={"url": json_stub.url}, price=5)
    json_stub.script(body=answer)
    created = alice_api.post("/svc/text/hook/", {"x": "go"}, format="json")
    assert created.status_code == 202
    run_worker()
    read = alice_api.get(created.json()["url"])
    assert read.status_code == 200
    done = read.json()
    assert done["status"] == "failed" and done["results"] == []
    assert done["error"]["code"] == "invalid_result"
    kinds = LedgerEntry.objects.filter(request_id=done["id"]).values_list("kind", flat=True)
    assert sorted(kinds) == ["hold", "release"]
    account = Account.objects.get(user=alice)
    assert (account.balance, account.held) == (1000, 0)


def test_a_strict_json_result_still_succeeds(alice, alice_api, make_offer, json_stub):
    make_offer("text", "hook", handler="http.post", params={"url": json_stub.url}, price=5)
    json_stub.script(body=b'{"x": 1.5, "y": "\\ud83d\\ude00", "z": [null, true]}')
    created = alice_api.post("/svc/text/hook/", {"x": "go"}, format="json").json()
    run_worker()
    done = alice_api.get(created["url"]).json()
    assert done["status"] == "succeeded"
    assert done["results"] == [{"x": 1.5, "y": "\N{GRINNING FACE}", "z": [None, True]}]

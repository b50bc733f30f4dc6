"""The settlement service: a request that ended is charged, released and recorded once, however
many times and from however many threads it is settled."""

import threading

import pytest
from django.db import connection

from api.documents import ServiceRequest
from api.models import Account, LedgerEntry, UsageRecord
from api.services.requests import request_fail, request_start, request_succeed
from api.services.settlement import Usage, request_settle
from tests.api.test_deals import make_deal
from tests.helpers import submit

GREET = "/svc/text/greet/"


def ledger(request_id: str) -> list[tuple[str, int]]:
    entries = LedgerEntry.objects.filter(request_id=request_id).order_by("id")
    return [(e.kind, e.amount) for e in entries]


def balance(user) -> tuple[int, int]:
    account = Account.objects.get(user=user)
    return account.balance, account.held


def ended(alice_api, outcome: str, name: str = "Ada") -> ServiceRequest:
    """A request that ended without being settled: what a crash between the status write and
    the settlement leaves (the executor's next run and recon both find it)."""
    created = submit(alice_api, GREET, {"name": name, "place": "P"})
    running = request_start(request_id=created["id"])
    if outcome == "succeeded":
        return request_succeed(request_id=running.id, results=["x"], current=running)
    return request_fail(request_id=running.id, code="boom", message="boom", current=running)


def test_a_succeeded_request_settled_twice_is_charged_once(alice, alice_api, greet_offer):
    request = ended(alice_api, "succeeded")
    usage = Usage(calls=1, credits=1, handler="local.echo", resource="local")

    request_settle(request=request, usage=usage)
    request_settle(request=request, usage=usage)

    assert ledger(request.id) == [("hold", 3), ("capture", 3)]
    assert balance(alice) == (997, 0)
    assert UsageRecord.objects.filter(request_id=request.id).count() == 1


def test_a_failed_request_settled_twice_is_released_once(alice, alice_api, greet_offer):
    request = ended(alice_api, "failed")

    request_settle(request=request)
    request_settle(request=request)

    assert ledger(request.id) == [("hold", 3), ("release", 3)]
    assert LedgerEntry.objects.get(request_id=request.id, kind="release").note == "failed"
    assert balance(alice) == (1000, 0)


def test_a_request_not_ended_is_left_alone(alice, alice_api, greet_offer):
    created = submit(alice_api, GREET, {"name": "Ada", "place": "P"})

    request_settle(request=ServiceRequest.objects.get(id=created["id"]))

    assert ledger(created["id"]) == [("hold", 3)]


def test_a_deal_is_settled_once_through_its_last_item(alice, alice_api, make_offer):
    greet = make_offer("text", "greet", prompt_template="Hello {name}", price=3)
    make_deal("solo", [(greet, "")])
    deal = alice_api.post("/svc/deal/solo/", {"inputs": {"name": "A"}}, format="json").json()
    [item] = deal["children"]
    running = request_start(request_id=item["id"])
    done = request_succeed(request_id=running.id, results=["Hello A"], current=running)

    for _ in range(3):  # the executor, its retry after a crash, recon
        request_settle(request=done)

    assert ServiceRequest.objects.get(id=deal["id"]).status == "succeeded"
    assert ledger(deal["id"]) == [("hold", 3), ("capture", 3)]
    assert UsageRecord.objects.filter(request_id=deal["id"]).count() == 1
    assert ledger(item["id"]) == []  # the deal holds the price, its items nothing


@pytest.mark.django_db(transaction=True)
def test_threads_settling_one_request_at_once_change_the_ledger_once(alice, alice_api, greet_offer):
    charged, released = ended(alice_api, "succeeded", "A"), ended(alice_api, "failed", "B")
    start = threading.Barrier(8)
    errors = []

    def settle(request):
        try:
            start.wait(10)
            request_settle(request=request)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=settle, args=(request,)) for request in (charged, released) * 4
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    assert errors == []
    assert ledger(charged.id) == [("hold", 3), ("capture", 3)]
    assert ledger(released.id) == [("hold", 3), ("release", 3)]
    assert balance(alice) == (997, 0)

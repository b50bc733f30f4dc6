"""Credits through the API in one process: hold at intake, capture on success, release else."""

import pytest

from api.documents import ServiceRequest
from api.models import Account, LedgerEntry, UsageRecord
from api.services.accounts import account_capture, account_grant, account_release
from tests.helpers import error_code, queued_job_ids, run_worker, submit


def account(user) -> tuple[int, int]:
    row = Account.objects.get(user=user)
    return row.balance, row.held


def kinds(request_id: str) -> list[str]:
    return sorted(LedgerEntry.objects.filter(request_id=request_id).values_list("kind", flat=True))


def test_intake_holds_the_price_and_success_captures_it(alice, alice_api, greet_offer):
    created = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    assert account(alice) == (997, 3)
    assert kinds(created["id"]) == ["hold"]
    run_worker()
    assert account(alice) == (997, 0)
    assert kinds(created["id"]) == ["capture", "hold"]
    usage = UsageRecord.objects.get(request_id=created["id"])
    assert (usage.price, usage.credits, usage.calls, usage.resource) == (3, 1, 1, "local")


def test_a_failed_request_is_released(alice, alice_api, make_offer):
    make_offer(service="t", action="broken", handler="local.fail", price=7)
    created = submit(alice_api, "/svc/t/broken/", {"x": 1})
    assert account(alice) == (993, 7)
    run_worker()
    assert account(alice) == (1000, 0)
    assert kinds(created["id"]) == ["hold", "release"]
    assert UsageRecord.objects.get(request_id=created["id"]).price == 0


def test_a_duplicate_is_not_charged_again(alice, alice_api, greet_offer):
    first = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    again = alice_api.post("/svc/text/greet/", {"name": "Ada", "place": "P"}, format="json")
    assert again.status_code == 200 and again.json()["id"] == first["id"]
    assert account(alice) == (997, 3)


def test_insufficient_credits_answers_402_and_changes_nothing(alice, alice_api, make_offer):
    make_offer(service="t", action="dear", price=1001)
    response = alice_api.post("/svc/t/dear/", {"x": 1}, format="json")
    assert response.status_code == 402 and error_code(response) == "insufficient_credits"
    error = response.json()["error"]
    assert (error["balance"], error["price"]) == (1000, 1001)
    assert account(alice) == (1000, 0)
    assert ServiceRequest.objects.count() == 0 and queued_job_ids() == []
    assert not LedgerEntry.objects.exclude(kind="grant").exists()


def test_a_client_without_an_account_gets_402(django_user_model, make_offer):
    from tests.conftest import _client_for

    api = _client_for(django_user_model.objects.create_user("nobody"))
    make_offer(service="t", action="x", price=1)
    response = api.post("/svc/t/x/", {"x": 1}, format="json")
    assert response.status_code == 402 and response.json()["error"]["balance"] == 0


def test_a_free_offer_needs_no_balance(django_user_model, make_offer):
    from tests.conftest import _client_for

    api = _client_for(django_user_model.objects.create_user("broke"))
    account_grant(user=api.user, amount=1)
    Account.objects.filter(user=api.user).update(balance=0)  # spent elsewhere
    make_offer(service="t", action="free", price=0)
    assert api.post("/svc/t/free/", {"x": 1}, format="json").status_code == 202


def test_capture_and_release_are_idempotent(alice, alice_api, greet_offer):
    created = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    run_worker()
    before = account(alice)
    assert account_capture(request_id=created["id"]) is False
    assert account_release(request_id=created["id"]) is False
    assert account(alice) == before
    assert kinds(created["id"]) == ["capture", "hold"]


def test_grants_with_a_key_apply_once(alice):
    account_grant(user=alice, amount=5, key="grant:invoice-42")
    account_grant(user=alice, amount=5, key="grant:invoice-42")
    assert account(alice) == (1005, 0)


def test_the_account_endpoint_shows_balance_holds_and_transactions(alice_api, greet_offer):
    created = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    body = alice_api.get("/svc/account/").json()
    assert (body["balance"], body["held"]) == (997, 3)
    assert [(t["kind"], t["amount"], t["request_id"]) for t in body["transactions"]] == [
        ("hold", 3, created["id"]),
        ("grant", 1000, None),
    ]
    assert body["transactions"][0]["created_at"].endswith("Z")


def test_the_account_endpoint_needs_a_token(anon_api):
    response = anon_api.get("/svc/account/")
    assert response.status_code == 401 and error_code(response) == "not_authenticated"


# --- cancel -----------------------------------------------------------------------------


def test_cancel_of_a_queued_request_releases_and_it_never_runs(alice, alice_api, greet_offer):
    created = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    response = alice_api.post(f"{created['url']}cancel/")
    assert response.status_code == 200
    assert response.json()["status"] == "canceled"
    assert account(alice) == (1000, 0)
    assert queued_job_ids() == []  # the RQ job was canceled too
    run_worker()
    done = alice_api.get(created["url"]).json()
    assert done["status"] == "canceled" and done["results"] == []
    assert kinds(created["id"]) == ["hold", "release"]


def test_cancel_of_a_finished_request_answers_409(alice_api, greet_offer):
    created = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    run_worker()
    response = alice_api.post(f"{created['url']}cancel/")
    assert response.status_code == 409 and error_code(response) == "not_cancelable"
    assert alice_api.get(created["url"]).json()["status"] == "succeeded"


def test_nobody_cancels_another_clients_request(alice_api, bob_api, greet_offer):
    created = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    response = bob_api.post(f"{created['url']}cancel/")
    assert response.status_code == 404
    assert alice_api.get(created["url"]).json()["status"] == "queued"


def test_a_result_arriving_after_cancel_is_discarded(alice, alice_api, greet_offer):
    from api.services.requests import request_cancel, request_start, request_succeed

    created = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    request_start(request_id=created["id"])
    assert request_cancel(request_id=created["id"])[1] == "cancel_requested"
    finished = request_succeed(request_id=created["id"], results=["late"])
    assert finished.status == "canceled" and finished.results == []


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_a_job_that_finds_its_request_terminal_settles_it(alice, alice_api, make_offer, outcome):
    """A crash between the Mongo transition and the SQL settlement converges on the rerun."""
    from executor.jobs import run_request

    handler = "local.echo" if outcome == "succeeded" else "local.fail"
    make_offer(service="t", action="x", handler=handler, price=4)
    created = submit(alice_api, "/svc/t/x/", {"x": 1})
    run_worker()
    LedgerEntry.objects.filter(request_id=created["id"]).exclude(kind="hold").delete()
    Account.objects.filter(user=alice).update(balance=996, held=4)  # as before settlement
    assert run_request(created["id"]) == "skipped"
    assert account(alice) == ((996, 0) if outcome == "succeeded" else (1000, 0))

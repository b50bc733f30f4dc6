"""Deals through the API in one process: pricing, pipelines, failure, dedupe and cancel."""

import threading
from datetime import datetime

import pytest
from django.db import connection

from api import deal_rules
from api.documents import ServiceRequest
from api.models import Account, LedgerEntry, ServiceDeal, ServiceDealAddon, ServiceDealItem
from api.services.cancel import request_cancel_by_client
from tests.helpers import error_code, queued_job_ids, run_concurrent_worker, run_worker


def account(user) -> tuple[int, int]:
    row = Account.objects.get(user=user)
    return row.balance, row.held


def kinds(request_id: str) -> list[str]:
    return sorted(LedgerEntry.objects.filter(request_id=request_id).values_list("kind", flat=True))


def make_deal(name: str, items: list, addons=(), **fields) -> ServiceDeal:
    """items: (offer, pipeline mode or "") pairs, in order; addons: offers, in order."""
    deal = ServiceDeal.objects.create(name=name, **fields)
    for position, (offer, pipeline) in enumerate(items):
        ServiceDealItem.objects.create(deal=deal, offer=offer, position=position, pipeline=pipeline)
    for position, offer in enumerate(addons):
        ServiceDealAddon.objects.create(deal=deal, offer=offer, position=position)
    return deal


def buy(api, name: str, inputs: dict, addons=None, status=202) -> dict:
    body = {"inputs": inputs} if addons is None else {"inputs": inputs, "addons": addons}
    response = api.post(f"/svc/deal/{name}/", body, format="json")
    assert response.status_code == status, response.content
    return response.json()


def read(api, request_id: str) -> dict:
    response = api.get(f"/svc/request/{request_id}/")
    assert response.status_code == 200
    return response.json()


@pytest.fixture
def offers(make_offer):
    return {
        "greet": make_offer("text", "greet", prompt_template="Hello {name}", price=3),
        "shout": make_offer("text", "shout", prompt_template="{previous}!", price=4),
        "wrap": make_offer("text", "wrap", prompt_template="[{previous}|{tag}]", price=2),
        "log": make_offer("text", "log", prompt_template="logged {previous}", price=1),
        "sign": make_offer("text", "sign", prompt_template="by {author}", price=5),
        "broken": make_offer("text", "broken", handler="local.fail", prompt_template="{x}"),
    }


# --- pricing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixed", "modifier", "items", "addons", "addons_modifier", "expected"),
    [
        (None, 0, [3, 4], [], 0, 7),  # no discount
        (None, 10, [3, 4], [], 50, 6),  # 6.3 → 6
        (None, 10, [5], [], 0, 5),  # 4.5 → 5: half rounds up
        (None, 50, [3], [], 0, 2),  # 1.5 → 2
        (None, 50, [1], [], 0, 1),  # 0.5 → 1
        (None, 100, [3, 4], [], 0, 0),  # free
        (10, 90, [3, 4], [], 0, 10),  # a fixed price ignores the modifier
        (10, 0, [3, 4], [5], 50, 13),  # add-on 2.5 → 3
        (None, 10, [3, 4], [5, 2], 50, 10),  # 6.3 → 6, add-ons 3.5 → 4
        (None, 0, [3], [5], 0, 8),  # add-on at full price
        (0, 0, [3], [], 0, 0),  # fixed at zero
    ],
)
def test_deal_price(fixed, modifier, items, addons, addons_modifier, expected):
    price = deal_rules.deal_price(
        fixed=fixed,
        price_modifier=modifier,
        item_prices=items,
        addon_prices=addons,
        addons_modifier=addons_modifier,
    )
    assert price == expected


def test_intake_holds_the_deal_price_once(alice, alice_api, offers):
    make_deal(
        "starter",
        [(offers["greet"], ""), (offers["shout"], "overwrite")],
        [offers["sign"]],
        price_modifier=10,
        addons_modifier=50,
    )
    without = buy(alice_api, "starter", {"name": "Ada"})
    assert without["price"] == 6 and without["kind"] == "deal" and without["addons"] == []
    with_addon = buy(alice_api, "starter", {"name": "Ada", "author": "Bo"}, ["text/sign"])
    assert with_addon["price"] == 6 + 3 and with_addon["addons"] == ["text/sign"]
    assert account(alice) == (1000 - 6 - 9, 15)
    assert kinds(without["id"]) == ["hold"] and kinds(with_addon["id"]) == ["hold"]
    children = with_addon["children"]
    assert [(c["service"], c["action"], c["addon"]) for c in children] == [
        ("text", "greet", False),
        ("text", "shout", False),
        ("text", "sign", True),
    ]
    assert all(c["price"] == 0 and c["parent"] == with_addon["id"] for c in children)
    # Items that follow nobody are queued now; the pipeline step waits for the greeting.
    assert sorted(queued_job_ids()) == sorted(
        [without["children"][0]["id"], children[0]["id"], children[2]["id"]]
    )


# --- pipelines ------------------------------------------------------------------------------


def test_each_pipeline_mode_passes_on_its_output(alice, alice_api, offers):
    make_deal(
        "chain",
        [
            (offers["greet"], ""),
            (offers["shout"], "overwrite"),
            (offers["wrap"], "extend"),
            (offers["log"], "pass_through"),
        ],
    )
    created = buy(alice_api, "chain", {"name": "Ada", "tag": "t"})
    run_worker()
    done = read(alice_api, created["id"])
    assert done["status"] == "succeeded", done
    greet, shout, wrap, log = done["children"]
    assert greet["results"] == ["Hello Ada"]
    assert shout["results"] == ["Hello Ada!"]  # overwrite: its own results
    assert wrap["results"] == ["[Hello Ada!|t]"]
    assert log["results"] == ["logged Hello Ada!\n\n[Hello Ada!|t]"]  # ran on extend's output
    assert done["results"] == [
        ["Hello Ada"],
        ["Hello Ada!"],
        ["Hello Ada!", "[Hello Ada!|t]"],  # extend: the previous results, then its own
        ["Hello Ada!", "[Hello Ada!|t]"],  # pass_through: the previous results unchanged
    ]
    assert account(alice) == (1000 - 10, 0)
    assert kinds(created["id"]) == ["capture", "hold"]
    assert all(c["status"] == "succeeded" for c in done["children"])


@pytest.mark.django_db(transaction=True)  # the worker's threads write with their own connections
def test_parallel_items_overlap_in_time(alice, alice_api, make_offer):
    slow_a = make_offer("slow", "a", prompt_template="a {x}", params={"delay_seconds": 0.5})
    slow_b = make_offer("slow", "b", prompt_template="b {x}", params={"delay_seconds": 0.5})
    make_deal("pair", [(slow_a, ""), (slow_b, "")])
    created = buy(alice_api, "pair", {"x": 1})
    run_concurrent_worker(4)
    done = read(alice_api, created["id"])
    assert done["status"] == "succeeded" and done["results"] == [["a 1"], ["b 1"]]
    first, second = (
        {key: datetime.fromisoformat(child[key]) for key in ("started_at", "finished_at")}
        for child in done["children"]
    )
    assert first["started_at"] < second["finished_at"]
    assert second["started_at"] < first["finished_at"]
    assert done["started_at"] == min(first["started_at"], second["started_at"]).isoformat(
        timespec="milliseconds"
    ).replace("+00:00", "Z")


def test_a_failure_mid_chain_cancels_what_depends_on_it_and_charges_nothing(
    alice, alice_api, offers, make_offer
):
    echo = make_offer("text", "echo", prompt_template="{previous} again", price=1)
    make_deal(
        "fragile",
        [
            (offers["greet"], ""),
            (offers["broken"], "overwrite"),
            (echo, "overwrite"),
            (offers["sign"], ""),
        ],
    )
    created = buy(alice_api, "fragile", {"name": "Ada", "x": 1, "author": "Bo"})
    run_worker()
    done = read(alice_api, created["id"])
    assert done["status"] == "failed" and done["results"] == []
    assert done["error"]["code"] == "item_failed" and done["error"]["item"] == 1
    assert "text/broken" in done["error"]["message"]
    greet, broken, echo_step, _sign = done["children"]
    assert greet["status"] == "succeeded"
    assert broken["status"] == "failed"
    assert echo_step["status"] == "canceled" and echo_step["error"]["code"] == "dependency_failed"
    assert echo_step["started_at"] is None and echo_step["results"] == []
    assert account(alice) == (1000, 0)
    assert kinds(created["id"]) == ["hold", "release"]
    assert not LedgerEntry.objects.filter(kind="capture").exists()


def test_children_are_readable_by_id_and_only_by_their_owner(alice_api, bob_api, offers):
    make_deal("solo", [(offers["greet"], "")])
    created = buy(alice_api, "solo", {"name": "Ada"})
    run_worker()
    child = created["children"][0]
    own = read(alice_api, child["id"])
    assert own["status"] == "succeeded" and own["results"] == ["Hello Ada"]
    assert own["parent"] == created["id"] and own["parent_url"] == created["url"]
    assert bob_api.get(f"/svc/request/{child['id']}/").status_code == 404
    assert bob_api.get(f"/svc/request/{created['id']}/").status_code == 404


# --- dedupe ---------------------------------------------------------------------------------


def test_an_identical_deal_is_answered_with_the_live_one(alice, alice_api, offers):
    make_deal("starter", [(offers["greet"], "")], [offers["sign"], offers["log"]])
    first = buy(alice_api, "starter", {"name": "Ada", "author": "Bo"}, ["text/sign"])
    again = buy(alice_api, "starter", {"name": "Ada", "author": "Bo"}, ["text/sign"], status=200)
    assert again["id"] == first["id"]
    assert [c["id"] for c in again["children"]] == [c["id"] for c in first["children"]]
    other = buy(alice_api, "starter", {"name": "Ada"})  # without the add-on: another deal
    assert other["id"] != first["id"]
    assert account(alice) == (1000 - 8 - 3, 11)
    assert ServiceRequest.objects(kind="deal").count() == 2


def test_the_order_add_ons_are_named_in_does_not_matter(alice_api, offers):
    make_deal("starter", [(offers["greet"], "")], [offers["sign"], offers["shout"]])
    offers["shout"].prompt_template = "{name}!"
    offers["shout"].save()
    inputs = {"name": "Ada", "author": "Bo"}
    first = buy(alice_api, "starter", inputs, ["text/shout", "text/sign"])
    again = buy(alice_api, "starter", inputs, ["text/sign", "text/shout"], status=200)
    assert again["id"] == first["id"]
    # Add-ons run after the items, in the deal's order, whatever order the client named them.
    assert [c["action"] for c in first["children"]] == ["greet", "sign", "shout"]


def test_a_deal_whose_jobs_cannot_be_queued_fails_and_releases(
    alice, alice_api, offers, monkeypatch
):
    def unavailable(**kwargs):
        raise ConnectionError("redis is down")

    monkeypatch.setattr("api.services.deals.enqueue_request", unavailable)
    make_deal("starter", [(offers["greet"], ""), (offers["shout"], "overwrite")])
    response = alice_api.post("/svc/deal/starter/", {"inputs": {"name": "A"}}, format="json")
    assert response.status_code == 503 and error_code(response) == "unavailable"
    (parent,) = ServiceRequest.objects(kind="deal")
    assert parent.status == "failed" and parent.error["code"] == "unavailable"
    assert {c.status for c in ServiceRequest.objects(parent=parent.id)} == {"canceled"}
    assert account(alice) == (1000, 0)
    assert kinds(parent.id) == ["hold", "release"]


def test_a_failed_deal_bought_again_is_a_new_request(alice, alice_api, offers):
    make_deal("doomed", [(offers["broken"], "")])
    first = buy(alice_api, "doomed", {"x": 1})
    run_worker()
    again = buy(alice_api, "doomed", {"x": 1})
    assert again["id"] != first["id"] and again["status"] == "queued"


# --- cancel ---------------------------------------------------------------------------------


def test_cancel_of_a_queued_deal_cancels_its_children_and_releases(alice, alice_api, offers):
    make_deal("starter", [(offers["greet"], ""), (offers["shout"], "overwrite")])
    created = buy(alice_api, "starter", {"name": "Ada"})
    response = alice_api.post(f"{created['url']}cancel/")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "canceled"
    assert [c["status"] for c in body["children"]] == ["canceled", "canceled"]
    assert account(alice) == (1000, 0)
    assert kinds(created["id"]) == ["hold", "release"]
    assert queued_job_ids() == []
    run_worker()  # nothing left to run
    assert read(alice_api, created["id"])["children"][0]["started_at"] is None
    assert alice_api.post(f"{created['url']}cancel/").status_code == 409


def test_an_item_is_canceled_through_its_deal(alice_api, offers):
    make_deal("starter", [(offers["greet"], "")])
    child = buy(alice_api, "starter", {"name": "Ada"})["children"][0]
    response = alice_api.post(f"{child['url']}cancel/")
    assert response.status_code == 409 and error_code(response) == "not_cancelable"
    assert response.json()["error"]["parent"] == child["parent"]


@pytest.mark.django_db(transaction=True)
def test_cancel_of_a_running_deal_stops_its_running_item(alice, alice_api, make_offer):
    slow = make_offer("slow", "wait", prompt_template="{x}", params={"delay_seconds": 30})
    after = make_offer("slow", "after", prompt_template="{previous}")
    make_deal("long", [(slow, ""), (after, "overwrite")])
    created = buy(alice_api, "long", {"x": 1})
    outcome = {}

    def cancel_when_running():
        try:
            deadline = threading.Event()
            while not deadline.wait(0.05):
                parent = ServiceRequest.objects(id=created["id"]).first()
                if parent.status == "running":
                    break
            outcome["cancel"] = request_cancel_by_client(request=parent)
        finally:
            connection.close()

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    run_concurrent_worker(2)  # returns once the running item stopped
    canceller.join(10)
    parent, result = outcome["cancel"]
    assert result == "canceled"
    done = read(alice_api, created["id"])
    assert done["status"] == "canceled"
    running, waiting = done["children"]
    assert running["status"] == "canceled" and running["started_at"] is not None
    assert running["results"] == []
    assert waiting["status"] == "canceled" and waiting["started_at"] is None
    assert account(alice) == (1000, 0)
    assert kinds(created["id"]) == ["hold", "release"]


# --- errors that change nothing -------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"inputs": {"name": "Ada"}, "addons": ["text/nope"]}, 400, "unknown_addons"),
        ({"inputs": {"name": "Ada"}, "addons": ["text/greet"]}, 400, "unknown_addons"),
        ({"inputs": {"name": "Ada"}, "addons": "text/sign"}, 400, "invalid_body"),
        ({"inputs": {"name": "Ada"}, "addons": ["text/sign", "text/sign"]}, 400, "invalid_body"),
        ({"inputs": ["Ada"]}, 400, "invalid_body"),
        ({"name": "Ada"}, 400, "invalid_body"),
        ({"inputs": {}}, 400, "missing_inputs"),
        ({"inputs": {"name": "Ada"}, "addons": ["text/sign"]}, 400, "missing_inputs"),
        ({"inputs": {"name": "Ada", "author": "Bo"}}, 400, "unknown_inputs"),
        ({"inputs": {"name": "Ada", "previous": "x"}}, 400, "unknown_inputs"),
        ({"inputs": {"name": {"a": 1}}}, 400, "invalid_inputs"),
    ],
)
def test_bad_deal_input_changes_nothing(alice, alice_api, offers, body, status, code):
    make_deal("starter", [(offers["greet"], ""), (offers["shout"], "overwrite")], [offers["sign"]])
    response = alice_api.post("/svc/deal/starter/", body, format="json")
    assert response.status_code == status and error_code(response) == code
    assert ServiceRequest.objects.count() == 0 and queued_job_ids() == []
    assert account(alice) == (1000, 0)


def test_unknown_inactive_and_unaffordable_deals(alice, alice_api, offers):
    assert error_code(alice_api.post("/svc/deal/nope/", {}, format="json")) == "not_found"
    make_deal("off", [(offers["greet"], "")], is_active=False)
    assert (
        alice_api.post("/svc/deal/off/", {"inputs": {"name": "A"}}, format="json").status_code
        == 404
    )
    offers["log"].is_active = False
    offers["log"].save()
    make_deal("partial", [(offers["greet"], ""), (offers["log"], "overwrite")])
    response = alice_api.post("/svc/deal/partial/", {"inputs": {"name": "A"}}, format="json")
    assert response.status_code == 404
    make_deal("dear", [(offers["greet"], "")], price=1001)
    response = alice_api.post("/svc/deal/dear/", {"inputs": {"name": "A"}}, format="json")
    assert response.status_code == 402 and error_code(response) == "insufficient_credits"
    assert ServiceRequest.objects.count() == 0 and queued_job_ids() == []
    assert account(alice) == (1000, 0)


def test_the_catalog_lists_active_deals_with_inputs_and_prices(anon_api, offers):
    make_deal(
        "starter",
        [(offers["greet"], ""), (offers["wrap"], "extend")],
        [offers["sign"]],
        price_modifier=10,
        addons_modifier=50,
    )
    make_deal("hidden", [(offers["greet"], "")], is_active=False)
    (deal,) = anon_api.get("/svc/").json()["deals"]
    assert deal["name"] == "starter" and deal["url"] == "/svc/deal/starter/"
    assert deal["inputs"] == ["name", "tag"]
    assert deal["price"] == 5  # (3 + 2) less 10 % = 4.5 → 5
    assert deal["offers"] == [
        {"offer": "text/greet", "pipeline": None, "price": 3},
        {"offer": "text/wrap", "pipeline": "extend", "price": 2},
    ]
    assert deal["addons"] == [{"offer": "text/sign", "inputs": ["author"], "price": 3}]

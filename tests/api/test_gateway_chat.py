"""The gateway's chat calls in-process: what a body becomes (api/chat.py: caps, checks, the
hold), the intake's answers in OpenAI's error shape, and metered settlement — capture what
was used, release the rest, once. The answers on the event loop are tested through the
stack (tests/system/test_gateway_live.py)."""

import pytest
from django.core.exceptions import ValidationError

from api.chat import TOKENS_PER_PART, charge_for, chat_call, count_message_tokens, metered
from api.errors import ApplicationError
from api.models import Account, LedgerEntry, UsageRecord
from api.selectors import request_get
from api.services.accounts import account_hold, account_settle_metered
from api.services.catalog import catalog_export, catalog_import
from api.services.keys import key_create
from api.services.settlement import request_settle

MESSAGES = [{"role": "user", "content": "hello there, how are you"}]


@pytest.fixture
def model(make_offer):
    return make_offer(
        service="chat",
        action="small",
        handler="openai.chat",
        prompt_template="{text}",
        model_name="acme/small",
        price=2,
        price_per_1k_input=100,
        price_per_1k_output=1000,
        params={"model": "upstream-1", "max_tokens": 50, "max_temperature": 1.0, "tools": False},
    )


def refused(offer, body: dict) -> ApplicationError:
    with pytest.raises(ApplicationError) as raised:
        chat_call(offer=offer, body=body)
    return raised.value


def test_the_operators_caps_hold_and_the_rest_passes_through(model):
    call = chat_call(
        offer=model,
        body={"model": "acme/small", "messages": MESSAGES, "max_tokens": 500, "top_p": 0.5,
              "temperature": 1.7, "seed": 7},
    )  # fmt: skip
    assert call.upstream_body == {
        "messages": MESSAGES,
        "max_tokens": 50,  # capped
        "top_p": 0.5,
        "temperature": 1.0,  # lowered to the ceiling
        "seed": 7,
    }
    assert call.input_tokens == count_message_tokens(MESSAGES)
    assert call.max_output == 50
    assert call.hold == 2 + metered(
        per_1k_input=100, per_1k_output=1000, input_tokens=call.input_tokens, output_tokens=50
    )
    asked = chat_call(offer=model, body={"messages": MESSAGES, "max_completion_tokens": 10, "n": 3})
    assert asked.upstream_body["max_completion_tokens"] == 10 and "max_tokens" not in (
        asked.upstream_body
    )
    assert asked.max_output == 30  # n choices of at most 10
    assert chat_call(offer=model, body={"messages": MESSAGES}).upstream_body["max_tokens"] == 50


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"messages": []}, "messages", "invalid_request"),
        ({"messages": "hi"}, "messages", "invalid_request"),
        ({"messages": [{"content": "no role"}]}, "messages", "invalid_request"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages", "invalid_request"),
        ({"messages": MESSAGES, "stream": "yes"}, "stream", "invalid_request"),
        ({"messages": MESSAGES, "stream_options": {"include_usage": True}}, "stream_options",
         "invalid_request"),
        ({"messages": MESSAGES, "max_tokens": 0}, "max_tokens", "invalid_request"),
        ({"messages": MESSAGES, "max_tokens": True}, "max_tokens", "invalid_request"),
        ({"messages": MESSAGES, "n": 99}, "n", "invalid_request"),
        ({"messages": MESSAGES, "temperature": "hot"}, "temperature", "invalid_request"),
        ({"messages": MESSAGES, "tools": [{"type": "function"}]}, "tools", "tools_not_allowed"),
    ],
)  # fmt: skip
def test_a_body_the_offer_does_not_take_is_a_400_naming_its_param(model, body, param, code):
    error = refused(model, body)
    assert (error.status, error.code, error.extra["param"]) == (400, code, param)


def test_the_input_count_grows_with_the_text_and_counts_images():
    short = count_message_tokens([{"role": "user", "content": "hi"}])
    longer = count_message_tokens([{"role": "user", "content": "hi " * 50}])
    assert short < longer
    image = [{"type": "image_url", "image_url": {"url": "data:,"}}]
    assert (
        count_message_tokens([{"role": "user", "content": image}])
        == count_message_tokens([{"role": "user", "content": ""}]) + TOKENS_PER_PART
    )


def test_the_charge_is_the_price_and_the_tokens_rounded_up_once_at_most_the_hold():
    meter = {"price": 2, "price_per_1k_input": 100, "price_per_1k_output": 1000, "hold": 40}
    used = {"prompt_tokens": 11, "completion_tokens": 7}
    assert charge_for(meter, used, succeeded=True) == (2 + 9, 0)  # ⌈(1100 + 7000) / 1000⌉
    assert charge_for(meter, used, succeeded=False) == (9, 0)  # relayed tokens, no fixed price
    assert charge_for(meter, {"prompt_tokens": 11, "completion_tokens": 0}, succeeded=False) == (
        0,
        0,
    )
    big = {"prompt_tokens": 10, "completion_tokens": 50}
    assert charge_for(meter, big, succeeded=True) == (40, 2 + 51 - 40)  # capped; overrun


def test_metered_prices_need_a_model_name_and_travel_in_the_catalog_file(make_offer, model):
    offer = make_offer(service="text", action="metered", price_per_1k_output=5)
    with pytest.raises(ValidationError) as raised:
        offer.full_clean()
    assert "model_name" in raised.value.message_dict
    exported = next(o for o in catalog_export()["offers"] if o["action"] == "small")
    assert (exported["price_per_1k_input"], exported["price_per_1k_output"]) == (100, 1000)
    report = catalog_import(
        data={**catalog_export(), "offers": [{**exported, "price_per_1k_input": 7}]}
    )
    assert report.ok, report.problems
    model.refresh_from_db()
    assert model.price_per_1k_input == 7


def test_the_intake_holds_the_most_the_call_can_cost(alice_api, alice, model):
    answer = alice_api.post(
        "/v1/chat/completions", {"model": "acme/small", "messages": MESSAGES}, format="json"
    )
    assert answer.status_code == 202  # under WSGI, the request to follow
    body = answer.json()
    call = chat_call(offer=model, body={"messages": MESSAGES})
    assert body["gateway"] == {
        "model": "acme/small",
        "stream": False,
        "include_usage": False,
        "completion_id": f"chatcmpl-{body['id'][:32]}",
        "created": body["gateway"]["created"],
        "held": call.hold,
        "usage": None,
        "charged": None,
    }
    hold = LedgerEntry.objects.get(request_id=body["id"], kind=LedgerEntry.HOLD)
    assert hold.amount == call.hold
    stored = request_get(request_id=body["id"])
    assert stored.meter["input_tokens"] == call.input_tokens and stored.status == "queued"
    again = alice_api.post(
        "/v1/chat/completions", {"model": "acme/small", "messages": MESSAGES}, format="json"
    )
    assert again.json()["id"] != body["id"]  # two equal calls are two calls


def test_the_intakes_errors_are_in_openais_shape(alice_api, alice, model, django_user_model):
    bad = alice_api.post("/v1/chat/completions", {"model": "acme/small"}, format="json")
    assert bad.status_code == 400
    assert bad.json() == {
        "error": {
            "message": "messages must be a non-empty array of messages",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "invalid_request",
        }
    }
    missing = alice_api.post(
        "/v1/chat/completions", {"model": "nope", "messages": MESSAGES}, format="json"
    )
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "model_not_found")
    Account.objects.filter(user=alice).update(balance=3)
    short = alice_api.post(
        "/v1/chat/completions", {"model": "acme/small", "messages": MESSAGES}, format="json"
    )
    assert short.status_code == 402
    assert short.json()["error"]["type"] == "insufficient_quota"
    assert short.json()["error"]["code"] == "insufficient_credits"
    assert Account.objects.get(user=alice).held == 0  # nothing held, nothing queued


def test_a_keys_budget_refuses_a_hold_beyond_it(client, alice, model):
    key = key_create(user=alice, name="small", budget=10, budget_period="day")
    answer = client.post(
        "/v1/chat/completions",
        {"model": "acme/small", "messages": MESSAGES},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key.secret}",
    )
    assert answer.status_code == 402
    assert answer.json()["error"]["code"] == "key_budget_exceeded"


def test_a_metered_offer_is_not_sold_on_svc(alice_api, model):
    answer = alice_api.post("/svc/chat/small/", {"text": "hi"}, format="json")
    assert answer.status_code == 400
    assert answer.json()["error"]["code"] == "metered_offer"
    assert "acme/small" in answer.json()["error"]["message"]


def test_a_metered_settlement_captures_what_was_used_and_releases_the_rest_once(alice):
    key = key_create(user=alice, name="budgeted", budget=500, budget_period="day")
    assert account_hold(user_id=alice.pk, request_id="r1", amount=100, api_key=key.key)
    assert account_settle_metered(request_id="r1", charge=37)
    assert not account_settle_metered(request_id="r1", charge=37)  # settled: nothing moves
    entries = {e.kind: e for e in LedgerEntry.objects.filter(request_id="r1")}
    assert (entries["capture"].amount, entries["capture"].settles) == (37, "r1")
    assert (entries["release"].amount, entries["release"].settles) == (63, "r1:rest")
    account = Account.objects.get(user=alice)
    assert (account.balance, account.held) == (1000 - 37, 0)
    key.key.refresh_from_db()
    assert (key.key.period_spent, key.key.in_flight) == (37, 0)  # the rest back in its budget
    assert account_hold(user_id=alice.pk, request_id="r2", amount=50)
    assert account_settle_metered(request_id="r2", charge=80)  # never more than the hold
    assert LedgerEntry.objects.get(request_id="r2", kind="capture").amount == 50
    assert not LedgerEntry.objects.filter(request_id="r2", kind="release").exists()


def test_settling_a_gateway_request_captures_its_recorded_charge(alice_api, alice, model):
    body = alice_api.post(
        "/v1/chat/completions", {"model": "acme/small", "messages": MESSAGES}, format="json"
    ).json()
    request = request_get(request_id=body["id"])
    request.status, request.charge = "succeeded", 9
    request.usage = {"prompt_tokens": 10, "completion_tokens": 7, "source": "upstream"}
    request_settle(request=request)
    request_settle(request=request)  # again: nothing more
    capture = LedgerEntry.objects.get(request_id=body["id"], kind="capture")
    release = LedgerEntry.objects.get(request_id=body["id"], kind="release")
    assert (capture.amount, release.amount) == (9, body["gateway"]["held"] - 9)
    account = Account.objects.get(user=alice)
    assert (account.balance, account.held) == (1000 - 9, 0)
    # A gateway request that ended with no charge recorded (lost, canceled queued): released.
    other = alice_api.post(
        "/v1/chat/completions", {"model": "acme/small", "messages": MESSAGES}, format="json"
    ).json()
    lost = request_get(request_id=other["id"])
    lost.status = "failed"
    request_settle(request=lost)
    assert (
        LedgerEntry.objects.get(request_id=other["id"], kind="release").amount
        == (other["gateway"]["held"])
    )
    assert not UsageRecord.objects.filter(request_id=other["id"]).exists()


def test_a_deal_with_a_metered_offer_is_not_sold(alice_api, alice, model):
    from tests.api.test_deals import make_deal

    make_deal("bundle", [(model, "")])
    answer = alice_api.post("/svc/deal/bundle/", {"inputs": {"text": "hi"}}, format="json")
    assert answer.status_code == 409
    assert answer.json()["error"]["code"] == "metered_offer"
    assert Account.objects.get(user=alice).held == 0


def test_a_path_under_v1_that_matches_nothing_answers_in_openais_shape(alice_api):
    answer = alice_api.get("/v1/models/a%0Ab")  # no route takes a newline (schemathesis)
    assert answer.status_code == 404
    assert answer.json()["error"] == {
        "message": "not found",
        "type": "invalid_request_error",
        "param": None,
        "code": "not_found",
    }


def test_a_key_past_its_rate_gets_openais_429_with_retry_after(client, alice, model):
    key = key_create(user=alice, name="slow", rate_per_minute=1)

    def post():
        return client.post(
            "/v1/chat/completions",
            {"model": "acme/small", "messages": MESSAGES},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {key.secret}",
        )

    assert post().status_code == 202
    refused = post()
    assert refused.status_code == 429
    assert int(refused["Retry-After"]) >= 1
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")

"""A gateway call in the executor, in-process against the streaming loopback upstream
(tests/stubs/chat_upstream.py): the chunks it publishes for the API to relay, the completion it
keeps, its usage and charge, and a call whose upstream counts more than was held."""

import json

import pytest
from prometheus_client import REGISTRY

from api import events
from api.models import Account, LedgerEntry
from api.selectors import request_get
from infra.stores import redis_connection
from tests.helpers import run_worker
from tests.stubs.chat_upstream import DEFAULT_API_KEY, PROMPT_OVERHEAD, stub_tokens

MESSAGES = [{"role": "user", "content": "tell me about rivers"}]


@pytest.fixture
def model(make_offer, chat_upstream, settings):
    settings.UPSTREAM_API_KEYS = {"OPENAI_API_KEY": DEFAULT_API_KEY}
    return make_offer(
        service="chat",
        action="rivers",
        handler="openai.chat",
        prompt_template="{text}",
        model_name="rivers-1",
        price=3,
        price_per_1k_input=1000,
        price_per_1k_output=2000,
        params={"model": "upstream-rivers", "base_url": chat_upstream.url, "max_tokens": 20},
    )


def call(api, **body) -> dict:
    answer = api.post(
        "/v1/chat/completions", {"model": "rivers-1", "messages": MESSAGES, **body}, format="json"
    )
    assert answer.status_code == 202, answer.content
    return answer.json()


def overruns() -> float:
    return REGISTRY.get_sample_value("svc_gateway_overrun_credits_total") or 0.0


def test_a_streamed_call_publishes_its_chunks_as_the_clients_and_keeps_the_completion(
    alice_api, model, chat_upstream
):
    chat_upstream.reply = "rivers run to the sea"
    accepted = call(alice_api, stream=True)
    run_worker()
    entries = redis_connection().xrange(events.chunk_key(accepted["id"]))
    chunks = [json.loads(fields[b"d"]) for _, fields in entries]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == (
        "rivers run to the sea"
    )
    assert {(c["id"], c["model"]) for c in chunks} == {
        (accepted["gateway"]["completion_id"], "rivers-1")
    }
    assert all("usage" not in c for c in chunks)  # the API sends the usage once, at the end
    done = request_get(request_id=accepted["id"])
    assert done.status == "succeeded"
    [completion] = done.results
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"] == {
        "role": "assistant",
        "content": "rivers run to the sea",
    }
    assert completion["choices"][0]["finish_reason"] == "stop"
    prompt = len(stub_tokens(MESSAGES[0]["content"])) + PROMPT_OVERHEAD
    assert done.usage == {
        "prompt_tokens": prompt,
        "completion_tokens": 5,
        "total_tokens": prompt + 5,
        "source": "upstream",
    }
    assert done.charge == 3 + -(-(prompt * 1000 + 5 * 2000) // 1000)
    sent = chat_upstream.requests[-1]["json"]
    assert sent["stream_options"] == {"include_usage": True}  # asked always: it is the bill


def test_a_whole_call_publishes_nothing(alice_api, model, chat_upstream):
    accepted = call(alice_api)
    run_worker()
    assert redis_connection().exists(events.chunk_key(accepted["id"])) == 0
    done = request_get(request_id=accepted["id"])
    assert done.results[0]["choices"][0]["message"]["content"] == "echo: tell me about rivers"
    assert done.results[0]["model"] == "rivers-1"


def test_a_call_that_costs_more_than_its_hold_captures_the_hold_and_records_the_overrun(
    alice_api, alice, model, chat_upstream
):
    chat_upstream.extra_prompt_tokens = 500  # the upstream counts far more input than held
    before = overruns()
    accepted = call(alice_api, stream=True)
    run_worker()
    done = request_get(request_id=accepted["id"])
    held = accepted["gateway"]["held"]
    assert (done.status, done.charge) == ("succeeded", held)
    notes = [e for e in done.events if e.get("code") == "overrun"]
    assert notes and notes[0]["overrun"] > 0
    assert overruns() == before + notes[0]["overrun"]
    assert LedgerEntry.objects.get(request_id=done.id, kind="capture").amount == held
    account = Account.objects.get(user=alice)
    assert (account.balance, account.held) == (1000 - held, 0)  # never below what was held

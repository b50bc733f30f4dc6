"""The OpenAI-compatible gateway through the stack as `make run` serves it (gunicorn's uvicorn
workers, an executor process), called with the official `openai` SDK, against a loopback
upstream that streams (tests/stubs/chat_upstream.py): content, usage and charges streamed and
not, a stream the upstream breaks, a client that leaves, 40 calls racing for 10 holds, a model
the key may not use, and a fallback when the first upstream's breaker is open."""

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from api.chat import count_message_tokens
from tests.live import LiveStack, wait_until
from tests.stubs.chat_upstream import DEFAULT_API_KEY, PROMPT_OVERHEAD, stub_tokens
from tests.system.test_live import assert_ledger_balances

pytestmark = pytest.mark.system

PRICE, PER_1K_INPUT, PER_1K_OUTPUT, MAX_TOKENS = 2, 100, 1000, 40
CATALOG = """
handlers:
  - {{id: openai.chat, credits: 0}}
offers:
  - service: chat
    action: stub
    price: {price}
    prompt_template: "{{text}}"
    handler: openai.chat
    model_name: stub-chat
    price_per_1k_input: {per_1k_input}
    price_per_1k_output: {per_1k_output}
    params: {{model: upstream-model, base_url: "{primary}", max_tokens: {max_tokens}}}
    fallbacks:
      - handler: openai.chat
        resource: openai-backup
        params: {{model: backup-model, base_url: "{backup}", max_tokens: {max_tokens}}}
  - service: chat
    action: other
    price: 1
    prompt_template: "{{text}}"
    handler: openai.chat
    model_name: other-chat
    params: {{model: upstream-model, base_url: "{primary}"}}
"""
# The resource map of the stack: the primary's breaker opens after 2 failures, no retries.
RESOURCES = """
resources:
  openai: {max_concurrency: 64, policy: wait, lease_ttl: 30, max_retries: 0,
           breaker_threshold: 2, breaker_cooldown: 600}
  openai-backup: {max_concurrency: 64, max_retries: 0}
"""
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "say something about the sea"},
]


@pytest.fixture
def gateway(stack, tmp_path, chat_upstream, chat_backup) -> LiveStack:
    resource_map = tmp_path / "resources.yaml"
    resource_map.write_text(RESOURCES)
    live = stack(OPENAI_API_KEY=DEFAULT_API_KEY, SVC_RESOURCE_MAP=str(resource_map))
    catalog = tmp_path / "gateway.yaml"
    catalog.write_text(
        CATALOG.format(
            price=PRICE,
            per_1k_input=PER_1K_INPUT,
            per_1k_output=PER_1K_OUTPUT,
            max_tokens=MAX_TOKENS,
            primary=chat_upstream.url,
            backup=chat_backup.url,
        )
    )
    live.manage("catalog", "import", str(catalog))
    live.start_api(workers=1, threads=8)
    return live


def sdk(client: httpx.Client, live: LiveStack) -> openai.OpenAI:
    key = client.headers["Authorization"].removeprefix("Bearer ")
    return openai.OpenAI(base_url=f"{live.url}/v1", api_key=key, max_retries=0, timeout=30)


def stub_usage(messages, reply: str) -> tuple[int, int]:
    prompt = sum(len(stub_tokens(m["content"])) + PROMPT_OVERHEAD for m in messages)
    return prompt, len(stub_tokens(reply))


def charge(prompt: int, completion: int, *, price: int = PRICE) -> int:
    return price + math.ceil((prompt * PER_1K_INPUT + completion * PER_1K_OUTPUT) / 1000)


def hold() -> int:
    return charge(count_message_tokens(MESSAGES), MAX_TOKENS)


def balance(client: httpx.Client) -> tuple[int, int]:
    account = client.get("/svc/account/").json()
    return account["balance"], account["held"]


def settled(client: httpx.Client, request_id: str) -> dict:
    """The request once it ended and its hold was settled."""

    def ended():
        body = client.get(f"/svc/request/{request_id}/").json()
        return body if body["status"] in ("succeeded", "failed", "canceled") else None

    body = wait_until(ended, what=f"request {request_id} to end")
    wait_until(lambda: balance(client)[1] == 0, what="the hold to be settled")
    return body


def test_streamed_and_whole_calls_return_the_upstreams_content_and_cost_the_same(
    gateway, chat_upstream
):
    gateway.start_executor("--concurrency", "8")
    alice = gateway.client("alice", credits=1000)
    client = sdk(alice, gateway)
    chat_upstream.reply = "the sea is wide and deep and blue today"
    prompt, completion = stub_usage(MESSAGES, chat_upstream.reply)
    expected = charge(prompt, completion)

    raw = client.chat.completions.with_raw_response.create(model="stub-chat", messages=MESSAGES)
    whole = raw.parse()
    assert whole.choices[0].message.content == chat_upstream.reply
    assert whole.model == "stub-chat"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (prompt, completion)
    assert int(raw.headers["x-credits-charged"]) == expected
    first = settled(alice, raw.headers["x-request-id"])
    assert first["gateway"]["charged"] == expected
    assert first["gateway"]["usage"]["source"] == "upstream"
    assert balance(alice) == (1000 - expected, 0)
    # What the upstream got: the operator's model, the client's messages, max_tokens capped.
    sent = chat_upstream.requests[-1]["json"]
    assert (sent["model"], sent["messages"], sent["max_tokens"]) == (
        "upstream-model",
        MESSAGES,
        MAX_TOKENS,
    )

    raw = client.chat.completions.with_raw_response.create(
        model="stub-chat",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == chat_upstream.reply
    assert all(c.object == "chat.completion.chunk" and c.model == "stub-chat" for c in chunks)
    last = chunks[-1]
    assert last.choices == []
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (prompt, completion)
    assert last.model_extra["charged"] == expected
    second = settled(alice, raw.headers["x-request-id"])
    assert second["gateway"]["charged"] == expected
    assert second["results"][0]["choices"][0]["message"]["content"] == chat_upstream.reply
    assert balance(alice) == (1000 - 2 * expected, 0)

    # An Idempotency-Key replay answers the same call again, charged once.
    def keyed():
        return client.chat.completions.with_raw_response.create(
            model="stub-chat", messages=MESSAGES, extra_headers={"Idempotency-Key": "call-1"}
        )

    first, again = keyed(), keyed()
    assert first.headers["x-request-id"] == again.headers["x-request-id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert again.parse().choices[0].message.content == chat_upstream.reply
    settled(alice, first.headers["x-request-id"])
    assert balance(alice) == (1000 - 3 * expected, 0)
    assert chat_upstream.calls == 3
    assert_ledger_balances(gateway)


def test_a_stream_the_upstream_breaks_is_charged_the_tokens_it_relayed(gateway, chat_upstream):
    gateway.start_executor("--concurrency", "8")
    alice = gateway.client("alice", credits=1000)
    chat_upstream.reply = "one two three four five six seven eight nine ten"
    chat_upstream.break_after = 4
    raw = sdk(alice, gateway).chat.completions.with_raw_response.create(
        model="stub-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    received = []
    with pytest.raises(openai.APIError):
        for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert "".join(received) == "".join(stub_tokens(chat_upstream.reply)[:4])
    body = settled(alice, raw.headers["x-request-id"])
    assert body["status"] == "failed"
    assert body["error"]["code"] == "upstream_stream_broken"
    usage = body["gateway"]["usage"]
    assert (usage["completion_tokens"], usage["source"]) == (4, "relayed")
    # The relayed tokens (and the input as counted), not the fixed price of a call that failed.
    expected = charge(count_message_tokens(MESSAGES), 4, price=0)
    assert body["gateway"]["charged"] == expected
    assert balance(alice) == (1000 - expected, 0)
    assert chat_upstream.calls == 1  # output reached the client: never tried again
    assert_ledger_balances(gateway)


def test_a_client_that_leaves_stops_the_upstream_call_and_pays_what_it_received(
    gateway, chat_upstream
):
    gateway.start_executor("--concurrency", "8")
    alice = gateway.client("alice", credits=1000)
    chat_upstream.reply = " ".join(f"word{i}" for i in range(30))
    chat_upstream.hang_after = 5
    raw = sdk(alice, gateway).chat.completions.with_raw_response.create(
        model="stub-chat", messages=MESSAGES, stream=True
    )
    stream = raw.parse()
    received = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            received += 1
        if received == 5:
            break
    stream.close()
    wait_until(chat_upstream.disconnected.is_set, what="the upstream call to be stopped")
    assert chat_upstream.streams_open == 0
    body = settled(alice, raw.headers["x-request-id"])
    assert body["status"] == "canceled"
    assert body["gateway"]["usage"]["completion_tokens"] == 5
    expected = charge(count_message_tokens(MESSAGES), 5, price=0)
    assert body["gateway"]["charged"] == expected
    assert balance(alice) == (1000 - expected, 0)
    assert_ledger_balances(gateway)


def test_40_streamed_calls_on_a_balance_for_10_holds_run_exactly_10(gateway, chat_upstream):
    alice = gateway.client("alice", credits=10 * hold())
    client = sdk(alice, gateway)
    outcomes: list = []
    lock = threading.Lock()

    def call(_):
        try:
            stream = client.chat.completions.create(
                model="stub-chat", messages=MESSAGES, stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            outcome = ("ok", text)
        except openai.APIStatusError as exc:
            outcome = (exc.status_code, exc.body.get("code") if exc.body else None)
        with lock:
            outcomes.append(outcome)

    with ThreadPoolExecutor(40) as pool:
        futures = [pool.submit(call, i) for i in range(40)]
        # The accepted ten wait for an executor: every refusal is in before any call ends.
        wait_until(lambda: len(outcomes) == 30, what="30 refusals")
        assert {o for o in outcomes} == {(402, "insufficient_credits")}
        assert balance(alice) == (0, 10 * hold())
        gateway.start_executor("--concurrency", "16")
        for future in futures:
            future.result()
    served = [o for o in outcomes if o[0] == "ok"]
    assert len(served) == 10
    assert all(text == "echo: say something about the sea" for _, text in served)
    wait_until(lambda: balance(alice)[1] == 0, what="the holds to be settled")
    prompt, completion = stub_usage(MESSAGES, "echo: say something about the sea")
    assert balance(alice)[0] == 10 * hold() - 10 * charge(prompt, completion)
    assert_ledger_balances(gateway)


def test_a_model_the_key_may_not_use_does_not_exist_for_it(gateway):
    gateway.start_executor("--concurrency", "2")
    gateway.client("alice", credits=100)
    token = gateway.manage("key", "create", "alice", "--allow", "chat/other").strip().split()[-1]
    client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=token, max_retries=0)
    with pytest.raises(openai.NotFoundError) as refused:
        client.chat.completions.create(model="stub-chat", messages=MESSAGES)
    assert refused.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    answer = client.chat.completions.create(model="other-chat", messages=MESSAGES)
    assert answer.choices[0].message.content == "echo: say something about the sea"


def test_an_open_breaker_falls_back_to_the_second_upstream_at_the_offers_rates(
    gateway, chat_upstream, chat_backup
):
    gateway.start_executor("--concurrency", "4")
    alice = gateway.client("alice", credits=1000)
    client = sdk(alice, gateway)
    chat_upstream.status = 500
    chat_backup.reply = "from the backup"
    prompt, completion = stub_usage(MESSAGES, chat_backup.reply)
    for _ in range(2):  # the primary fails (no retries), the backup serves: the breaker opens
        raw = client.chat.completions.with_raw_response.create(model="stub-chat", messages=MESSAGES)
        assert raw.parse().choices[0].message.content == "from the backup"
    assert chat_upstream.calls == 2
    raw = client.chat.completions.with_raw_response.create(
        model="stub-chat", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(raw.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "from the backup"
    )
    assert chat_upstream.calls == 2  # refused at the breaker: the primary was not called
    body = settled(alice, raw.headers["x-request-id"])
    assert body["handler_used"] == "openai.chat"
    assert chat_backup.requests[-1]["json"]["model"] == "backup-model"
    assert body["gateway"]["charged"] == charge(prompt, completion)
    assert chunks[-1].model_extra["charged"] == charge(prompt, completion)
    assert balance(alice) == (1000 - 3 * charge(prompt, completion), 0)
    assert_ledger_balances(gateway)

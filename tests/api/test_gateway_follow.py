"""How the API follows a streamed gateway call (api/http/chat.py `follow`), against real Redis
and MongoDB: the chunks published before it began, those it hears, and — the hub's
subscription lost and back — those it missed, each once and in order, then the call's end."""

import asyncio
import json

import pytest

from api import events
from api.http import chat
from api.http import hub as hubs
from api.services.requests import request_start, request_succeed

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fresh_hub(monkeypatch):
    monkeypatch.setattr(hubs, "_hub", None)
    monkeypatch.setattr(hubs, "_stopping", False)


def chunk(n: int) -> str:
    return json.dumps({"choices": [{"index": 0, "delta": {"content": f"c{n}"}}]})


def test_follow_relays_every_chunk_once_in_order_across_a_lost_subscription(
    fresh_hub, alice_api, make_offer
):
    make_offer(
        service="chat",
        action="f",
        handler="openai.chat",
        model_name="f-1",
        params={"model": "m", "base_url": "http://127.0.0.1:9/v1", "max_tokens": 5},
    )
    accepted = alice_api.post(
        "/v1/chat/completions",
        {"model": "f-1", "messages": [{"role": "user", "content": "hi"}], "stream": True},
        format="json",
    ).json()
    request_id = accepted["id"]
    request_start(request_id=request_id, worker="w")

    async def scenario() -> list:
        hub = hubs.hub()
        publish = events.chunk_publisher(hub.client)
        await publish(request_id, [chunk(1), chunk(2)])  # before the answer began
        seen: list = []
        following = chat.follow(request_id, chunks=True)

        async def until(count: int):
            while sum(len(d) for k, d in seen if k == "chunks") < count:
                seen.append(await asyncio.wait_for(anext(following), 10))

        await until(2)
        await publish(request_id, [chunk(3)])
        await publish(request_id, [chunk(4)])
        await until(4)
        # The hub misses one (published while its subscription was down), then comes back.
        await hub.client.xadd(events.chunk_key(request_id), {"d": chunk(5)})
        hub._broadcast(hubs.RESYNC)
        await publish(request_id, [chunk(6)])
        await until(6)
        await asyncio.to_thread(request_succeed, request_id=request_id, results=[{}])
        async for item in following:
            seen.append(item)
        return seen

    seen = asyncio.run(scenario())
    relayed = [
        json.loads(d)["choices"][0]["delta"]["content"]
        for k, ds in seen
        if k == "chunks"
        for d in ds
    ]
    assert relayed == ["c1", "c2", "c3", "c4", "c5", "c6"]
    kind, ended = seen[-1]
    assert kind == "end" and ended["status"] == "succeeded"

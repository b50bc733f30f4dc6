"""Clients that need not poll, through the stack as `make run` serves it (gunicorn's uvicorn
workers, the ASGI application, executors as processes): the SSE stream of a request, its
resumption after `Last-Event-ID`, the same events over the WebSocket, `Prefer: wait`, the
place in the queue, and a stopping API process ending what it holds instead of cutting it."""

import asyncio
import json
import signal
import threading
import time

import httpx
import pytest
import websockets

from tests.live import LiveStack, wait_until


def sse_events(response: httpx.Response):
    """(id, event, data) of each event of an SSE answer, as they arrive; comments skipped."""
    event: dict = {}
    for line in response.iter_lines():
        if not line:
            if "data" in event:
                yield event.get("id"), event.get("event", "message"), json.loads(event["data"])
            event = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            event[name] = value.removeprefix(" ")


@pytest.fixture
def live(stack) -> LiveStack:
    live = stack()
    live.start_api(workers=1, threads=4)
    return live


def key_of(client: httpx.Client) -> str:
    return client.headers["Authorization"].removeprefix("Bearer ")


def test_the_sse_stream_yields_queued_running_succeeded_and_ends(live):
    alice = live.client("alice", credits=20)
    request = alice.post("/svc/text/slow/", json={"text": "hi"}).json()
    assert request["urls"] == {
        "get": f"/svc/request/{request['id']}/",
        "cancel": f"/svc/request/{request['id']}/cancel/",
        "events": f"/svc/request/{request['id']}/events/",
    }
    seen = []
    with alice.stream("GET", request["urls"]["events"], timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for event_id, kind, data in sse_events(response):
            seen.append((event_id, kind, data))
            if len(seen) == 1:  # the stream opened on the queued request: now run it
                assert data["status"] == "queued"
                live.start_executor("--concurrency", "2")
    statuses = [data["status"] for _, kind, data in seen if kind == "request"]
    assert statuses[0] == "queued" and statuses[-2:] == ["running", "succeeded"]
    final = seen[-1][2]
    # Each event is the same JSON as the GET.
    assert final == alice.get(request["url"]).json()
    assert final["results"] == ["hi"]
    assert all(event_id for event_id, _, data in seen[1:] if data["status"] != "queued")


def test_a_stream_resumed_after_last_event_id_sends_only_what_came_after(live):
    alice = live.client("alice", credits=20)
    request = alice.post("/svc/text/slow/", json={"text": "again"}).json()
    live.start_executor("--concurrency", "2")
    wait_until(lambda: alice.get(request["url"]).json()["status"] == "succeeded", what="done")
    with alice.stream("GET", request["urls"]["events"], timeout=30) as response:
        first = list(sse_events(response))
    # A stream opened after the end: the request as it is, and the end of the stream.
    assert [data["status"] for _, _, data in first] == ["succeeded"]
    last_id = first[0][0]
    assert last_id, "the stream names its latest event, so a client can resume from it"

    # Resumed from the `running` event: exactly the events after it.
    ids = _event_ids(live, request["id"])
    assert len(ids) >= 2
    headers = {"Last-Event-ID": ids[-2]}
    with alice.stream("GET", request["urls"]["events"], headers=headers, timeout=30) as response:
        resumed = list(sse_events(response))
    assert response.status_code == 200
    assert [(i, data["status"]) for i, _, data in resumed] == [(ids[-1], "succeeded")]

    # Resumed after the last event of a request that ended: nothing more to say (204 tells an
    # EventSource to stop reconnecting).
    headers = {"Last-Event-ID": ids[-1]}
    response = alice.get(request["urls"]["events"], headers=headers)
    assert response.status_code == 204


def _event_ids(live: LiveStack, request_id: str) -> list[str]:
    import redis

    from api.events import stream_key

    connection = redis.Redis.from_url(live.env["REDIS_URL"])
    return [entry_id.decode() for entry_id, _ in connection.xrange(stream_key(request_id))]


def test_a_deals_stream_carries_each_item_and_the_deal_with_its_items(live):
    alice = live.client("alice", credits=20)
    deal = alice.post("/svc/deal/starter/", json={"inputs": {"name": "Ada"}}).json()
    seen = []
    with alice.stream("GET", deal["urls"]["events"], timeout=30) as response:
        for _, kind, data in sse_events(response):
            seen.append((kind, data))
            if len(seen) == 1:
                live.start_executor("--concurrency", "2")
    children = [data for kind, data in seen if kind == "child"]
    # Both items ran (greet, then its pipeline step shout) and each said so as it went.
    by_item = {}
    for child in children:
        by_item.setdefault(child["id"], []).append(child["status"])
    assert len(by_item) == 2
    assert all(statuses[-1] == "succeeded" for statuses in by_item.values())
    assert all(child["parent"] == deal["id"] for child in children)
    kind, final = seen[-1]
    assert kind == "request" and final["status"] == "succeeded"
    assert final == alice.get(deal["url"]).json()
    assert [c["status"] for c in final["children"]] == ["succeeded", "succeeded"]


def test_a_quiet_stream_sends_keep_alive_comments(stack):
    live = stack(SVC_SSE_KEEPALIVE_SECONDS="0.5")
    live.start_api(workers=1, threads=4)
    alice = live.client("alice", credits=20)
    request = alice.post("/svc/text/slow/", json={"text": "quiet"}).json()
    comments = 0
    with alice.stream("GET", request["urls"]["events"], timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith(":"):
                comments += 1
                if comments == 2:
                    break
    assert comments == 2


def test_another_clients_stream_is_a_404_and_a_bad_key_a_401(live):
    alice = live.client("alice", credits=20)
    bob = live.client("bob", credits=20)
    request = alice.post("/svc/text/slow/", json={"text": "mine"}).json()
    assert bob.get(request["urls"]["events"]).status_code == 404
    anonymous = httpx.get(live.url + request["urls"]["events"])
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "not_authenticated"


def test_a_queued_request_shows_its_place_in_the_queue_and_the_stream_follows_it(live):
    alice = live.client("alice", credits=50)
    ids = [alice.post("/svc/text/slow/", json={"text": f"q{n}"}).json()["id"] for n in range(4)]
    positions = [alice.get(f"/svc/request/{i}/").json()["queue_position"] for i in ids]
    assert positions == [0, 1, 2, 3]
    seen = []
    with alice.stream("GET", f"/svc/request/{ids[-1]}/events/", timeout=60) as response:
        for _, _, data in sse_events(response):
            seen.append(data)
            if len(seen) == 1:
                assert data["queue_position"] == 3
                live.start_executor("--concurrency", "1")
    queued = [d["queue_position"] for d in seen if d["status"] == "queued"]
    assert queued == sorted(queued, reverse=True) and len(set(queued)) == len(queued)
    assert seen[-1]["status"] == "succeeded" and seen[-1]["queue_position"] is None


def test_live_answers_are_limited_per_client_and_bad_keys_per_address(stack):
    live = stack(SVC_LIVE_PER_CLIENT="1", SVC_ANON_RATE="3/min")
    live.start_api(workers=1, threads=4)
    alice = live.client("alice", credits=20)
    one = alice.post("/svc/text/slow/", json={"text": "one"}).json()
    two = alice.post("/svc/text/slow/", json={"text": "two"}).json()
    with alice.stream("GET", one["urls"]["events"], timeout=30) as first:
        assert first.status_code == 200
        lines = first.iter_lines()  # kept: dropping the iterator would close the connection
        next(lines)  # the stream is open (and held)
        second = alice.get(two["urls"]["events"])
        assert second.status_code == 429
        assert second.json()["error"]["code"] == "too_many_streams"
        assert second.headers["retry-after"] == "1"
    # Once the first is closed, a stream may open again.
    wait_until(lambda: _opens(alice, two["urls"]["events"]), what="a stream once the first closed")
    # Bad keys: 401 until the address has failed SVC_ANON_RATE times, then 429.
    codes = [
        httpx.get(
            live.url + one["urls"]["events"], headers={"Authorization": "Bearer svc_live_nope"}
        ).status_code
        for _ in range(5)
    ]
    assert codes[:3] == [401, 401, 401] and codes[-1] == 429


def _opens(client: httpx.Client, url: str) -> bool:
    with client.stream("GET", url, timeout=30) as response:
        return response.status_code == 200


def test_the_websocket_subscription_gets_the_same_events(live):
    alice = live.client("alice", credits=20)
    request = alice.post("/svc/text/slow/", json={"text": "ws"}).json()
    ws_url = live.url.replace("http://", "ws://") + "/ws/requests/"

    async def follow() -> list[dict]:
        frames = []
        async with websockets.connect(ws_url) as socket:
            # A browser cannot set headers: the key comes in the first message.
            await socket.send(json.dumps({"type": "auth", "key": key_of(alice)}))
            assert json.loads(await socket.recv()) == {"type": "authenticated"}
            await socket.send(json.dumps({"type": "subscribe", "request_id": request["id"]}))
            while True:
                frame = json.loads(await asyncio.wait_for(socket.recv(), 30))
                frames.append(frame)
                if frame["type"] == "event" and len(frames) == 2:
                    await asyncio.to_thread(live.start_executor, "--concurrency", "2")
                if frame["type"] in ("ended", "error"):
                    return frames

    frames = asyncio.run(follow())
    assert frames[0] == {"type": "subscribed", "request_id": request["id"]}
    events = [f for f in frames if f["type"] == "event"]
    assert [e["data"]["status"] for e in events][0] == "queued"
    assert [e["data"]["status"] for e in events][-2:] == ["running", "succeeded"]
    assert frames[-1] == {"type": "ended", "request_id": request["id"]}
    assert events[-1]["data"] == alice.get(request["url"]).json()


def test_the_websocket_takes_the_key_in_a_header_and_refuses_others_requests(live):
    alice = live.client("alice", credits=20)
    bob = live.client("bob", credits=20)
    request = alice.post("/svc/text/slow/", json={"text": "private"}).json()
    ws_url = live.url.replace("http://", "ws://") + "/ws/requests/"

    async def as_bob() -> dict:
        headers = {"Authorization": f"Bearer {key_of(bob)}"}
        async with websockets.connect(ws_url, additional_headers=headers) as socket:
            await socket.send(json.dumps({"type": "subscribe", "request_id": request["id"]}))
            return json.loads(await asyncio.wait_for(socket.recv(), 10))

    assert asyncio.run(as_bob())["code"] == "not_found"

    async def bad_key() -> int:
        headers = {"Authorization": "Bearer svc_live_nope"}
        try:
            async with websockets.connect(ws_url, additional_headers=headers) as socket:
                await socket.recv()
        except websockets.exceptions.ConnectionClosed as closed:
            return closed.rcvd.code
        except websockets.exceptions.InvalidStatus as refused:
            return refused.response.status_code
        return 0

    assert asyncio.run(bad_key()) in (403, 4401)


def test_prefer_wait_answers_a_finished_request_in_one_call(live):
    live.start_executor("--concurrency", "2")
    alice = live.client("alice", credits=20)
    response = alice.post("/svc/text/slow/", json={"text": "now"}, headers={"Prefer": "wait=20"})
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=20"
    body = response.json()
    assert body["status"] == "succeeded" and body["results"] == ["now"]
    assert body == alice.get(body["url"]).json()


def test_prefer_wait_answers_a_running_request_after_n_seconds(live):
    live.start_executor("--concurrency", "2")
    alice = live.client("alice", credits=20)
    started = time.monotonic()
    response = alice.post("/svc/text/wait/", json={"text": "long"}, headers={"Prefer": "wait=2"})
    waited = time.monotonic() - started
    assert response.status_code == 202
    assert response.headers["preference-applied"] == "wait=2"
    assert response.json()["status"] in ("queued", "running")
    assert 2 <= waited < 10
    # Without the header: no wait, no Preference-Applied.
    plain = alice.post("/svc/text/wait/", json={"text": "other"})
    assert plain.status_code == 202 and "preference-applied" not in plain.headers


def test_a_stopping_api_process_answers_the_waits_it_holds_instead_of_cutting_them(live):
    alice = live.client("alice", credits=20)
    answers = []

    def waiting_call():
        answers.append(
            alice.post("/svc/text/wait/", json={"text": "d"}, headers={"Prefer": "wait=60"})
        )

    caller = threading.Thread(target=waiting_call)
    caller.start()
    wait_until(lambda: _live_waits(live) == 1, what="the wait to be held")
    api = live.processes[0]
    started = time.monotonic()
    api.send_signal(signal.SIGTERM)
    caller.join(30)
    assert answers and answers[0].status_code == 202
    assert answers[0].json()["status"] == "queued"
    assert time.monotonic() - started < 10  # the process did not sit on it until its grace ended
    api.wait(30)


def _live_waits(live: LiveStack) -> int:
    """svc_live_answers{kind="wait"} summed over the stack's processes."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(live.metrics_dir))
    for family in registry.collect():
        if family.name == "svc_live_answers":
            return int(sum(s.value for s in family.samples if s.labels.get("kind") == "wait"))
    return 0

"""Hostile input through the real stack (gunicorn's uvicorn workers, as `make run` serves):
a chunked body is read (and 413 past the limit), hostile bodies answer 400 and change
nothing, and identical POSTs racing one intake answer only with a request that was held."""

import http.client
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

from api.documents import ServiceRequest
from tests.live import LiveStack

GREET = "/svc/text/greet/"  # the system catalog's: "Hello {name}", price 3
STARTER = "/svc/deal/starter/"  # greet then shout: price 6


def raw_post(live: LiveStack, client, path: str, body, headers=None) -> tuple[int, dict]:
    """POST with http.client: `body` bytes go with a Content-Length, an iterable of chunks
    with `Transfer-Encoding: chunked` (http.client's own choice for an iterable)."""
    connection = http.client.HTTPConnection("127.0.0.1", live.port, timeout=30)
    try:
        connection.request(
            "POST",
            path,
            body=body,
            headers={
                "Authorization": client.headers["Authorization"],
                "Content-Type": "application/json",
                **(headers or {}),
            },
        )
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def stored_and_held(client) -> tuple[int, int, int]:
    account = client.get("/svc/account/").json()
    return ServiceRequest.objects.count(), account["balance"], account["held"]


def test_chunked_and_hostile_bodies_through_gunicorn(stack):
    live = stack(SVC_MAX_BODY_BYTES="32768")
    live.start_api(workers=1, threads=4)
    alice = live.client("alice", credits=100)

    status, body = raw_post(live, alice, GREET, iter([b'{"name"', b': "Ada', b'"}']))
    assert status == 202, body
    assert alice.get(body["url"]).json()["inputs"] == {"name": "Ada"}

    before = stored_and_held(alice)
    too_big = (b"A" * 1000 for _ in range(40))  # 40 chunks of 1 KB, no Content-Length
    status, body = raw_post(live, alice, GREET, too_big)
    assert (status, body["error"]["code"]) == (413, "payload_too_large")
    hostile = [
        b'{"name": NaN}',
        b'{"name": 1e400}',
        b'{"name": "\\ud800"}',
        b'{"name": "\xff"}',
        b"[" * 10_000 + b"]" * 10_000,  # the JSON parser's recursion, in a worker thread
        b'{"name": ' + b"[" * 40 + b"]" * 40 + b"}",
    ]
    for raw in hostile:
        for chunks in (raw, iter([raw[: len(raw) // 2], raw[len(raw) // 2 :]])):
            status, body = raw_post(live, alice, GREET, chunks)
            assert (status, body["error"]["code"]) == (400, "invalid_json"), raw[:40]
    assert stored_and_held(alice) == before
    assert alice.get("/healthz").status_code == 200


def race(client, path: str, body: dict, count: int = 30) -> list[tuple[int, dict]]:
    barrier = Barrier(count)

    def one(_):
        barrier.wait()
        response = client.post(path, json=body)
        return response.status_code, response.json()

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_identical_posts_racing_an_intake_through_gunicorn(stack):
    live = stack()
    live.start_api(workers=2, threads=8)
    short = live.client("alice", credits=2)  # less than either price
    funded = live.client("bob", credits=30)

    for path, body in ((GREET, {"name": "Ada"}), (STARTER, {"inputs": {"name": "Ada"}})):
        outcomes = race(short, path, body)
        assert Counter(status for status, _ in outcomes) == {402: 30}, outcomes[:3]
    assert stored_and_held(short) == (0, 2, 0)

    held = 0
    for path, body, price in (
        (GREET, {"name": "Ada"}, 3),
        (STARTER, {"inputs": {"name": "Ada"}}, 6),
    ):
        outcomes = race(funded, path, body)
        assert Counter(status for status, _ in outcomes) == {202: 1, 200: 29}, outcomes[:3]
        assert len({answer["id"] for _, answer in outcomes}) == 1
        held += price  # charged once
        account = funded.get("/svc/account/").json()
        assert (account["balance"], account["held"]) == (30 - held, held)
    assert sorted(t["kind"] for t in account["transactions"]) == ["grant", "hold", "hold"]

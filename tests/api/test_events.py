"""Request events (api/events.py): each change of a request is published where it is made —
status changes, each try of its handler, a cancel asked, a deal's items — on the request's
Stream and the one channel, carrying the same JSON as the request's GET; a Redis that fails
loses the event, never the change."""

import json
import time

import pytest
import redis

from api import events
from api.services.requests import request_cancel, request_note_try, request_start
from infra.stores import redis_connection
from tests.helpers import submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def channel():
    """The events channel, subscribed before the test acts; messages() drains what came."""
    pubsub = redis_connection().pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(events.CHANNEL)

    def messages() -> list[tuple[str, str, str, dict]]:
        """What came, once the channel has been quiet for half a second (the subscription's
        own confirmation, which get_message swallows as None, does not end the wait)."""
        got, quiet_since = [], time.monotonic()
        while time.monotonic() - quiet_since < 0.5:
            message = pubsub.get_message(timeout=0.1)
            if message is not None:
                request_id, stream_id, kind, data = events.parse_message(message["data"])
                got.append((request_id, stream_id, kind, json.loads(data)))
                quiet_since = time.monotonic()
        return got

    yield messages
    pubsub.close()


def stream(request_id: str) -> list[tuple[str, dict]]:
    return [
        (kind, json.loads(data))
        for _, fields in redis_connection().xrange(events.stream_key(request_id))
        for kind, data in [events.parse_entry(fields)]
    ]


def test_a_start_a_try_and_a_cancel_asked_each_publish_the_request_as_its_get_shows_it(
    alice_api, greet_offer, channel
):
    request = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "Paris"})
    assert channel() == []  # the intake publishes nothing: nobody can watch it yet
    request_start(request_id=request["id"], worker="w1")
    request_note_try(request_id=request["id"], note="upstream 503; retrying", code="http_503")
    request_cancel(request_id=request["id"])

    published = channel()
    assert [(rid, kind) for rid, _, kind, _ in published] == [(request["id"], "request")] * 3
    bodies = [data for *_, data in published]
    assert [b["status"] for b in bodies] == ["running", "running", "running"]
    assert [b["tries"] for b in bodies] == [0, 1, 1]
    assert [b["cancel_requested"] for b in bodies] == [False, False, True]
    # The last one is the GET, field for field.
    assert bodies[-1] == alice_api.get(request["url"]).json()
    # The stream keeps them, in order, with the ids the channel named.
    assert stream(request["id"]) == [("request", b) for b in bodies]
    ids = [stream_id for _, stream_id, _, _ in published]
    kept = [i.decode() for i, _ in redis_connection().xrange(events.stream_key(request["id"]))]
    assert ids == kept
    assert 0 < redis_connection().ttl(events.stream_key(request["id"])) <= events.STREAM_SECONDS


def test_a_deals_item_publishes_on_its_own_stream_and_on_the_deals(alice_api, greet_offer, channel):
    from api.models import ServiceDeal, ServiceDealItem

    deal = ServiceDeal.objects.create(name="duo", price=5)
    ServiceDealItem.objects.create(deal=deal, offer=greet_offer, position=0)
    parent = alice_api.post(
        "/svc/deal/duo/", {"inputs": {"name": "Ada", "place": "Paris"}}, format="json"
    ).json()
    [child] = parent["children"]
    assert child["status"] == "queued", parent
    assert request_start(request_id=child["id"], worker="w1") is not None

    by_stream = {(rid, kind) for rid, _, kind, _ in channel()}
    assert (child["id"], "request") in by_stream  # the item's own stream
    assert (parent["id"], "child") in by_stream  # and its deal's, as a `child` event
    [(kind, data)] = [entry for entry in stream(parent["id"]) if entry[0] == "child"]
    assert data["id"] == child["id"] and data["status"] == "running"


def test_a_redis_that_fails_loses_the_event_not_the_change(alice_api, greet_offer, monkeypatch):
    request = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "Paris"})

    def refuse(*args, **kwargs):
        raise redis.ConnectionError("Redis went away")

    monkeypatch.setattr(redis.commands.core.Script, "__call__", refuse)
    before = events.EVENTS_PUBLISHED.labels("error")._value.get()
    started = request_start(request_id=request["id"], worker="w1")
    monkeypatch.undo()  # Redis is back (the API's own limits use scripts too)
    assert started is not None and started.status == "running"
    assert alice_api.get(request["url"]).json()["status"] == "running"
    assert events.EVENTS_PUBLISHED.labels("error")._value.get() == before + 1

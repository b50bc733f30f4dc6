from rq import SimpleWorker

from executor.queues import get_queue, redis_connection


def run_worker():
    SimpleWorker([get_queue()], connection=redis_connection()).work(burst=True)


def test_it_runs_a_request_end_to_end(alice_api, greet_offer):
    response = alice_api.post("/svc/text/greet/", {"name": "Ada", "place": "Paris"}, format="json")
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued"
    run_worker()
    got = alice_api.get(body["url"]).json()
    assert got["status"] == "succeeded", got
    assert got["results"] == ["Hello Ada from Paris"]

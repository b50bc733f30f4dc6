"""The API's probes (api/http/probes.py) and the liveness port of the other processes
(infra/probe.py): liveness apart from readiness, readiness 503 while a store is down and while
the process drains, a stuck loop failing its liveness and a busy one not."""

import time

import httpx
import pytest

from api.http import hub as hubs
from infra import probe
from infra.embedded import free_port
from infra.stores import redis_connection

pytestmark = pytest.mark.django_db


def test_liveness_answers_whatever_the_host_and_asks_no_store(client, redis_gone):
    answer = client.get("/livez", HTTP_HOST="10.1.2.3:8000")  # a kubelet, by the pod's address
    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})
    assert client.get("/healthz", HTTP_HOST="10.1.2.3:8000").status_code == 400  # not a probe


@pytest.fixture
def redis_gone(settings):
    """The process's Redis client made again, for a port nothing listens on."""
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    redis_connection.cache_clear()
    yield
    redis_connection.cache_clear()


def test_readiness_is_503_while_a_store_is_down(client, request):
    ready = client.get("/readyz", HTTP_HOST="10.1.2.3:8000")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"sql": "ok", "mongo": "ok", "redis": "ok"}}
    request.getfixturevalue("redis_gone")  # Redis refuses on loopback from now on
    down = client.get("/readyz")
    assert down.status_code == 503
    assert down.json()["status"] == "unavailable"
    assert down.json()["checks"]["redis"].startswith("error: ")


def test_readiness_is_503_draining_once_told_to_stop(client, monkeypatch):
    monkeypatch.setattr(hubs, "_hub", None)
    monkeypatch.setattr(hubs, "_stopping", False)
    assert client.get("/readyz").status_code == 200
    hubs.drain()  # what the worker does on SIGTERM (marketplace/asgi_worker.py)
    draining = client.get("/readyz")
    assert (draining.status_code, draining.json()["status"]) == (503, "draining")
    assert client.get("/livez").status_code == 200  # alive all the same: not to be killed


def test_a_loop_that_stops_going_round_fails_its_liveness():
    beat = probe.serve(free_port(), what="executor", stale_after=0.5, addr="127.0.0.1")
    url = f"http://127.0.0.1:{beat.server.server_address[1]}/livez"
    try:
        assert httpx.get(url).json()["status"] == "ok"
        deadline = time.monotonic() + 5
        while httpx.get(url).status_code == 200:  # no touch: the loop is stuck
            assert time.monotonic() < deadline, "the probe never noticed"
            time.sleep(0.1)
        stuck = httpx.get(url)
        assert stuck.status_code == 503
        assert stuck.json()["process"] == "executor" and stuck.json()["status"] == "stuck"
        beat.touch()  # it goes round again
        assert httpx.get(url).status_code == 200
        assert httpx.get(url.replace("/livez", "/other")).status_code == 404
    finally:
        beat.close()


def test_a_failing_check_fails_liveness_even_while_the_loop_beats():
    beat = probe.serve(
        free_port(),
        what="executor",
        stale_after=60,
        addr="127.0.0.1",
        checks=[lambda: "its asyncio loop did not answer within 5s"],
    )
    try:
        answer = httpx.get(f"http://127.0.0.1:{beat.server.server_address[1]}/livez")
        assert answer.status_code == 503
        assert answer.json()["problems"] == ["its asyncio loop did not answer within 5s"]
    finally:
        beat.close()


def test_the_liveness_port_serves_the_processes_metrics_to_the_metrics_token(settings):
    settings.SVC_METRICS_TOKEN = "probe-metrics-token"
    settings.SVC_METRICS_TRUSTED_NETWORKS = []
    beat = probe.serve(free_port(), what="executor", stale_after=60, addr="127.0.0.1")
    url = f"http://127.0.0.1:{beat.server.server_address[1]}/metrics"
    try:
        assert httpx.get(url).status_code == 403
        assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 403
        scraped = httpx.get(url, headers={"Authorization": "Bearer probe-metrics-token"})
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        assert "svc_inflight" in scraped.text  # the executor's own families
        assert "svc_credits_balance" not in scraped.text  # the store figures are the API's
    finally:
        beat.close()

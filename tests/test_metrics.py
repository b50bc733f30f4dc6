"""`GET /metrics`: one scrape of the API shows its workers', the executor's and recon's series
(multiprocess mode), plus resource and credit figures; labels stay bounded."""

import os
import subprocess

import httpx
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from marketplace import prometheus
from tests.helpers import run_worker, submit
from tests.live import LiveStack, wait_until

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


GREET = {"service": "text", "action": "greet"}


def test_one_scrape_of_the_api_shows_every_process_s_metrics(tmp_path):
    live = LiveStack(f"sqlite:///{tmp_path / 'live.sqlite3'}", tmp_path)
    try:
        live.prepare()
        live.start_api(workers=2, threads=4)
        live.start_executor("--concurrency", "4")
        live.start_recon("--interval", "1")
        alice = live.client("alice", credits=100)
        before = scrape(live.url)
        # create_client ran as its own short-lived process: its grant still counts.
        assert value(before, "svc_credits_total", kind="grant") == 100
        ids = []
        for name in ("a", "b", "c"):
            response = alice.post("/svc/text/greet/", json={"name": name})
            assert response.status_code == 202
            ids.append(response.json()["id"])
        response = alice.post("/svc/text/broken/", json={"text": "x"})
        assert response.status_code == 202
        ids.append(response.json()["id"])

        def settled():
            samples = scrape(live.url)
            ended = value(samples, "svc_requests_total", **GREET, status="succeeded") == 3
            broken = value(
                samples, "svc_requests_total", service="text", action="broken", status="failed"
            )
            # Recon's view, from its latest loop after all four ended: one of four failed.
            recon = value(samples, "svc_executors_live") == 1
            recon = recon and value(samples, "svc_error_rate") == 0.25
            return samples if ended and broken == 1 and recon else None

        after = wait_until(settled, timeout=60, what="the executor's and recon's series")
    finally:
        live.stop()

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # The executor's series, read through the API.
    assert delta("svc_job_seconds_count", resource="local") == 4
    assert value(after, "svc_inflight", resource="local") == 0
    assert delta("svc_credits_consumed_total", resource="local") == 3  # echo: 1 credit a call
    # Every credit movement, whichever process made it (API holds, executor settlements).
    assert delta("svc_credits_total", kind="hold") == 3 * 3 + 5
    assert delta("svc_credits_total", kind="capture") == 3 * 3
    assert delta("svc_credits_total", kind="release") == 5
    assert (value(after, "svc_credits_held"), value(after, "svc_credits_balance")) == (0, 91)
    # django-prometheus, summed over both gunicorn workers.
    intake = {"view": "offer-intake", "transport": "http", "method": "POST"}
    assert delta("django_http_requests_total_by_view_transport_method_total", **intake) == 4
    assert value(after, "django_http_requests_latency_seconds_by_view_method_count",
                 view="offer-intake", method="POST") == 4  # fmt: skip
    # Recon's series.
    assert ("svc_queue_depth", frozenset({"queue": "svc-local"}.items())) in after
    # Resource figures read from Redis at scrape time (configs/resource_map.yaml).
    assert value(after, "svc_resource_slots", resource="openai") == 16
    assert value(after, "svc_resource_slots_in_use", resource="openai") == 0
    assert value(after, "svc_resource_budget_remaining_ratio", resource="openai") == 1

    # Bounded labels: no request id, client or token anywhere; no per-process series of ours.
    token = alice.headers["Authorization"].split()[-1]
    for (name, labels), _ in after.items():
        label_names = {k for k, _ in labels}
        assert not label_names & {"request_id", "user", "client", "token"}, name
        for _, label_value in labels:
            assert label_value not in ids and label_value not in ("alice", token), name
        if name.startswith("svc_"):
            assert "pid" not in label_names, name  # a gauge without a multiprocess_mode


def test_without_a_multiprocess_dir_metrics_shows_this_process(alice_api, greet_offer, client):
    """In-process (no PROMETHEUS_MULTIPROC_DIR): the default registry plus store figures."""
    assert not prometheus.multiproc_dir()
    labels = {**GREET, "status": "succeeded"}
    succeeded = REGISTRY.get_sample_value("svc_requests_total", labels) or 0
    submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    run_worker()
    samples = parse(client.get("/metrics").content.decode())
    assert value(samples, "svc_requests_total", **labels) == succeeded + 1
    assert value(samples, "svc_credits_held") == 0
    assert value(samples, "svc_credits_balance") == 1000 - 3
    assert ("svc_resource_slots", frozenset({"resource": "openai"}.items())) in samples
    assert any(name.startswith("django_http_requests") for name, _ in samples)


def test_live_gauges_of_dead_processes_are_pruned(tmp_path, monkeypatch):
    monkeypatch.setenv(prometheus.MULTIPROC_ENV, str(tmp_path))
    gone = subprocess.Popen(["true"])
    gone.wait()
    files = {
        "dead_live": tmp_path / f"gauge_livesum_{gone.pid}.db",
        "dead_counter": tmp_path / f"counter_{gone.pid}.db",
        "dead_max": tmp_path / f"gauge_max_{gone.pid}.db",
        "alive_live": tmp_path / f"gauge_livesum_{os.getpid()}.db",
    }
    for path in files.values():
        path.write_bytes(b"")
    prometheus.prune_dead()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        files[k].name for k in ("dead_counter", "dead_max", "alive_live")
    )


def test_requests_ended_outside_the_executor_are_counted(alice_api, greet_offer):
    """A cancel in the API ends a request too: counted once, in the API process."""
    canceled = {**GREET, "status": "canceled"}
    before = REGISTRY.get_sample_value("svc_requests_total", canceled) or 0
    created = submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    assert alice_api.post(f"/svc/request/{created['id']}/cancel/").status_code == 200
    assert alice_api.post(f"/svc/request/{created['id']}/cancel/").status_code == 409  # ended
    assert REGISTRY.get_sample_value("svc_requests_total", canceled) == before + 1

"""Observability of a whole stack: one scrape shows every process's metrics; every record of a
request reaches Fluentd with its id and no secret."""

import json
import secrets

from cryptography.fernet import Fernet

from infra import logs
from tests.api.test_metrics import GREET, scrape, value
from tests.infra.test_logging import LEAK
from tests.live import LiveStack, wait_until


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


def test_a_request_s_records_reach_fluentd_with_its_id_and_no_secret(tmp_path, fluentd):
    live = LiveStack(f"sqlite:///{tmp_path / 'live.sqlite3'}", tmp_path)
    fernet_key = Fernet.generate_key().decode()
    live.env.update(
        FLUENTD_HOST="127.0.0.1", FLUENTD_PORT=str(fluentd.port), CONFIG_FERNET_KEY=fernet_key
    )
    config_secret = "planted-" + secrets.token_hex(12)  # no secret shape: redacted by value
    input_secret = "sk-" + secrets.token_urlsafe(24)
    try:
        live.prepare()
        config = tmp_path / "probe.yaml"
        config.write_text(f"~planted: {config_secret}\n")
        live.manage("config", "upload", str(config), "--name", "observability_probe")
        live.start_api(workers=1, threads=4)
        live.start_executor("--concurrency", "2")
        alice = live.client("alice", credits=50)
        token = alice.headers["Authorization"].split()[-1]
        response = alice.post("/svc/text/greet/", json={"name": input_secret})
        assert response.status_code == 202, response.text
        request_id = response.json()["id"]
        wait_until(
            lambda: alice.get(f"/svc/request/{request_id}/").json()["status"] == "succeeded",
            what="the request to succeed",
        )
        live.manage("shell", "-c", LEAK)

        def story():
            records = fluentd.snapshot()
            mine = [(t, r) for t, r in records if r.get("request_id") == request_id]
            done = any("request succeeded" in r["message"] for _, r in mine)
            leaked = [r for _, r in records if r.get("logger") == "svc.leak"]
            return (records, mine) if done and len(leaked) == 3 else None

        records, mine = wait_until(story, timeout=30, what="the request's records at Fluentd")
    finally:
        live.stop()

    by_role = {tag: [r for t, r in mine if t == tag] for tag in ("svc.api", "svc.executor")}
    assert any("request accepted" in r["message"] for r in by_role["svc.api"]), mine
    executor_records = by_role["svc.executor"]
    assert any("request started" in r["message"] for r in executor_records), mine
    for record in executor_records:
        assert record["role"] == "executor" and record["offer"] == "text/greet"
        assert isinstance(record["client"], int)
    started = next(r for r in executor_records if "request started" in r["message"])
    assert started["attempt"] == 1 and started["resource"] == "local"
    for _, record in mine:
        assert {"time", "level", "logger", "message", "pid"} <= set(record)

    leaked = [r for _, r in records if r.get("logger") == "svc.leak"]
    assert [r["message"] for r in leaked] == [
        f"config secret {logs.REDACTED}",
        f"upstream said: Authorization: Bearer {logs.REDACTED}",
        "it failed",
    ]
    assert "RuntimeError: boom with [redacted]" in leaked[2]["exc"]
    everything = json.dumps([record for _, record in records])
    for secret in (config_secret, input_secret, token, fernet_key, "abcdefghijklmnop1234"):
        assert secret not in everything

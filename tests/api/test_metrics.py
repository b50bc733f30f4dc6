"""`GET /metrics`: one scrape of the API shows its workers', the executor's and recon's series
(multiprocess mode), plus resource and credit figures; labels stay bounded."""

import ipaddress
import os
import subprocess

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from infra import metrics as prometheus
from infra.envs import envnetworks
from tests.helpers import metrics_headers, run_worker, submit

Samples = dict[tuple[str, frozenset], float]


def parse(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(url: str) -> Samples:
    response = httpx.get(f"{url}/metrics", headers=metrics_headers(), timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse(response.text)


def value(samples: Samples, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


GREET = {"service": "text", "action": "greet"}


def test_without_a_multiprocess_dir_metrics_shows_this_process(alice_api, greet_offer, client):
    """In-process (no PROMETHEUS_MULTIPROC_DIR): the default registry plus store figures."""
    assert not prometheus.multiproc_dir()
    labels = {**GREET, "status": "succeeded"}
    succeeded = REGISTRY.get_sample_value("svc_requests_total", labels) or 0
    submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    run_worker()
    samples = parse(client.get("/metrics", headers=metrics_headers()).content.decode())
    assert value(samples, "svc_requests_total", **labels) == succeeded + 1
    assert value(samples, "svc_credits_held") == 0
    assert value(samples, "svc_credits_balance") == 1000 - 3
    assert ("svc_resource_slots", frozenset({"resource": "openai"}.items())) in samples
    assert any(name.startswith("django_http_requests") for name, _ in samples)


def test_live_gauges_of_dead_processes_are_pruned(tmp_path, settings):
    settings.PROMETHEUS_MULTIPROC_DIR = str(tmp_path)
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


# --- who may read them ------------------------------------------------------------------------


def test_metrics_want_the_token(client, db):
    assert client.get("/metrics", headers=metrics_headers()).status_code == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Token x"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"
    token = metrics_headers()["Authorization"].split()[1]
    # Not the token with something added, nor non-ASCII (compared as bytes, never a 500).
    for sent in (f"{token}x", f"{token[:-1]}é"):
        assert (
            client.get("/metrics", headers={"Authorization": f"Bearer {sent}"}).status_code == 403
        )


def test_a_trusted_network_reads_metrics_without_a_token(client, db, settings):
    settings.SVC_METRICS_TRUSTED_NETWORKS = [ipaddress.ip_network("10.0.0.0/8")]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.2").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="not-an-address").status_code == 403


def test_without_a_token_or_networks_nobody_reads_metrics(client, db, settings):
    settings.SVC_METRICS_TOKEN = ""
    settings.SVC_METRICS_TRUSTED_NETWORKS = []
    for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"}):
        response = client.get("/metrics", headers=headers)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "forbidden"


def test_trusted_networks_are_cidrs(monkeypatch):
    monkeypatch.setenv("SVC_METRICS_TRUSTED_NETWORKS", "10.0.0.0/8, fd00::/8,127.0.0.1")
    assert [str(n) for n in envnetworks("SVC_METRICS_TRUSTED_NETWORKS")] == [
        "10.0.0.0/8",
        "fd00::/8",
        "127.0.0.1/32",
    ]
    monkeypatch.setenv("SVC_METRICS_TRUSTED_NETWORKS", "10.0.0.0/8,office")
    with pytest.raises(ImproperlyConfigured, match="'office' is not a network"):
        envnetworks("SVC_METRICS_TRUSTED_NETWORKS")

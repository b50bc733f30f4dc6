"""deploy/: Prometheus config and alert rules pass promtool (and their unit tests), the Grafana
dashboard loads, and every metric name they use is one the code really exposes."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from api import metrics as api_metrics  # noqa: F401 (registers its metrics)
from executor import metrics  # noqa: F401 (registers its metrics)
from infra import metrics as prometheus
from recon import alerts  # noqa: F401
from recon import metrics as recon_metrics

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
# Metric names in PromQL: words that start like ours or django-prometheus's.
METRIC_NAME = re.compile(r"\b((?:svc|django)_[a-z0-9_]+)\b")
# Series Prometheus itself makes.
BUILTIN = {"up"}


@pytest.fixture(scope="module")
def promtool():
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI must check the alert rules: install Debian's prometheus package")
        pytest.skip(
            "!!! promtool not installed (apt-get install prometheus): rules NOT CHECKED !!!"
        )
    return path


def run(promtool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [promtool, *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60
    )


def test_the_alert_rules_pass_promtool(promtool):
    result = run(promtool, "check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_alert_rules_fire_as_their_unit_tests_say(promtool):
    result = run(promtool, "test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_prometheus_config_passes_promtool(promtool, tmp_path):
    """Checked where a deploy puts it: beside its rules and the token file it names (promtool
    wants the file to exist; the real one is never in the repository)."""
    for name in ("prometheus.yml", "alerts.yml"):
        shutil.copy(PROMETHEUS / name, tmp_path / name)
    (tmp_path / "svc_metrics_token").write_text("a-token\n")
    result = subprocess.run(
        [promtool, "check", "config", "prometheus.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_api_with_the_metrics_token():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    [api] = [job for job in config["scrape_configs"] if job["job_name"] == "svc-api"]
    assert api["authorization"] == {"type": "Bearer", "credentials_file": "svc_metrics_token"}


def test_promtool_rejects_a_broken_rule(promtool, tmp_path):
    """The check above can fail: a rule with a bad expression does not pass."""
    broken = {"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "sum(svc_inflight"}]}]}
    path = tmp_path / "broken.yml"
    path.write_text(yaml.safe_dump(broken))
    assert run(promtool, "check", "rules", str(path)).returncode != 0


@pytest.fixture
def exposed_names(client, db) -> set[str]:
    """Every sample name /metrics can show: registered metrics (django-prometheus's once a
    request went through its middleware), recon's lazy gauges, and the store figures."""
    client.get("/healthz")
    names = {sample.name for family in REGISTRY.collect() for sample in family.samples}
    # Histograms and counters without observations yet still name their samples.
    for family in REGISTRY.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(f"{family.name}_total")
        if family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "count", "sum"))
    names.update(
        gauge._name
        for gauge in vars(recon_metrics).values()
        if isinstance(gauge, recon_metrics._LazyGauge)
    )
    names.update(family.name for family in prometheus.StoreCollector().collect())
    return names


def _unknown(exprs: list[str], names: set[str]) -> set[str]:
    used = {name for expr in exprs for name in METRIC_NAME.findall(expr)}
    return used - names - BUILTIN


def test_every_alert_uses_metrics_the_code_exposes(exposed_names):
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"][0]["rules"]
    exprs = [rule["expr"] for rule in rules]
    assert {"svc_queue_oldest_seconds", "svc_executors_live", "svc_error_rate"} <= {
        n for e in exprs for n in METRIC_NAME.findall(e)
    }
    assert _unknown(exprs, exposed_names) == set()


def test_the_dashboard_loads_and_uses_metrics_the_code_exposes(exposed_names):
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [target["expr"] for panel in panels for target in panel["targets"]]
    assert len(panels) >= 10 and all(panel["targets"] for panel in panels)
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    titles = " ".join(panel["title"] for panel in panels).lower()
    for topic in ("intake rate", "latency", "queue depth", "in flight", "outcomes", "credits"):
        assert topic in titles
    assert _unknown(exprs, exposed_names) == set()
    # The check can fail: a made-up name is caught.
    assert _unknown(["rate(svc_made_up_total[5m])"], exposed_names) == {"svc_made_up_total"}


def test_fluentd_listens_where_the_processes_send():
    conf = (DEPLOY / "fluentd" / "fluent.conf").read_text()
    source = re.search(r"<source>(.*?)</source>", conf, re.S)[1]
    assert "@type forward" in source and re.search(r"port 24224\b", source)
    assert "<match svc.**>" in conf  # the tag is FLUENTD_TAG (svc) + the process role

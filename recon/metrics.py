"""Recon's metrics (prometheus_client's default registry)."""

from prometheus_client import Counter

REPAIRED = Counter(
    "svc_recon_repaired_total", "Requests, jobs and holds recon repaired, by reason", ["reason"]
)

"""Recon's metrics (prometheus_client's default registry)."""

from prometheus_client import Counter, Gauge

REPAIRED = Counter(
    "svc_recon_repaired_total", "Requests, jobs and holds recon repaired, by reason", ["reason"]
)

# Set by recon/health.py's export() once per recon loop.
QUEUE_DEPTH = Gauge("svc_queue_depth", "Jobs waiting in the RQ queue", ["queue"])
QUEUE_OLDEST = Gauge(
    "svc_queue_oldest_seconds", "Age of the oldest queued request of the queue (0: none)", ["queue"]
)
EXECUTORS_LIVE = Gauge("svc_executors_live", "Executors that beat within the last 20 s")
ERROR_RATE = Gauge(
    "svc_error_rate",
    "failed / (succeeded + failed) of the requests that ended in SVC_HEALTH_ERROR_MINUTES",
)

"""Recon's metrics (prometheus_client's default registry).

In multiprocess mode (infra/metrics.py) the API's /metrics shows them: the gauges
take the most recent value any live recon process set (`livemostrecent`), and disappear when
no recon runs (an alert watches for that: deploy/prometheus/alerts.yml, SvcReconDown).
"""

import threading
import warnings

from prometheus_client import Counter, Gauge

REPAIRED = Counter(
    "svc_recon_repaired_total", "Requests, jobs and holds recon repaired, by reason", ["reason"]
)
# Alert webhook posts (recon/alerts.py): kind discord | webhook, outcome delivered | failed.
ALERTS_SENT = Counter(
    "svc_alerts_sent_total",
    "Alert webhook deliveries, by webhook kind and outcome",
    ["kind", "outcome"],
)


class _LazyGauge:
    """A gauge without labels, created when first set: every process imports this module (the
    API for /healthz), and a gauge created at import would show 0 in /metrics from processes
    that never measure it, hiding a recon that is not running."""

    def __init__(self, name: str, documentation: str):
        self._name, self._documentation = name, documentation
        self._gauge: Gauge | None = None
        self._lock = threading.Lock()

    def set(self, value: float) -> None:
        if self._gauge is None:
            with self._lock:
                if self._gauge is None:
                    self._gauge = Gauge(
                        self._name, self._documentation, multiprocess_mode="livemostrecent"
                    )
        self._gauge.set(value)


class _ExportedGauge(Gauge):
    """A labelled gauge that health.export() clears and sets again each loop. In multiprocess
    mode prometheus_client cannot drop a label's value from its files (and warns at every
    clear): a queue recon stops reporting (no longer routed) keeps its last value until recon
    restarts; the ones it reports are current."""

    def clear(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            super().clear()


# Set by api/health.py's export() once per recon loop.
QUEUE_DEPTH = _ExportedGauge(
    "svc_queue_depth", "Jobs waiting in the RQ queue", ["queue"], multiprocess_mode="livemostrecent"
)
QUEUE_OLDEST = _ExportedGauge(
    "svc_queue_oldest_seconds",
    "Age of the oldest queued request of the queue (0: none)",
    ["queue"],
    multiprocess_mode="livemostrecent",
)
EXECUTORS_LIVE = _LazyGauge("svc_executors_live", "Executors that beat within the last 20 s")
ERROR_RATE = _LazyGauge(
    "svc_error_rate",
    "failed / (succeeded + failed) of the requests that ended in SVC_HEALTH_ERROR_MINUTES",
)

"""The executor's Prometheus metrics, and the credit counter every process feeds.

Labels stay bounded: `service`/`action` are catalog slugs, `status` a terminal status,
`resource` a resource map entry, `kind` a ledger kind; never a request id or a client.
In multiprocess mode (PROMETHEUS_MULTIPROC_DIR, marketplace/prometheus.py) the API's
/metrics sums these over every process of the host; gauges say how (`multiprocess_mode`).
"""

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram

# Upper bounds (seconds) of svc_job_seconds' buckets: local handlers take milliseconds, AI
# calls seconds to minutes, and SVC_JOB_TIMEOUT ends a job at 900 s by default.
JOB_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

REQUESTS = Counter(
    "svc_requests_total",
    "Requests that ended, by offer (service, action; a deal: `deal`, its name) and terminal status",
    ["service", "action", "status"],
)
JOB_SECONDS = Histogram(
    "svc_job_seconds",
    "Seconds from a request's start (slots taken) to its outcome being recorded, by resource",
    ["resource"],
    buckets=JOB_SECONDS_BUCKETS,
)
INFLIGHT = Gauge(
    "svc_inflight",
    "Requests executing now, by resource (summed over the live executor processes)",
    ["resource"],
    multiprocess_mode="livesum",
)
CREDITS_CONSUMED = Counter(
    "svc_credits_consumed_total",
    "Integration credits spent by executed requests (handler credits x calls), by resource",
    ["resource"],
)
CREDITS = Counter(
    "svc_credits_total",
    "Client credits moved through the ledger, by kind (grant, hold, capture, release)",
    ["kind"],
)


@contextlib.contextmanager
def running(resource: str) -> Iterator[None]:
    """Around a request's execution: counted in flight, and timed."""
    label = resource or "none"
    gauge = INFLIGHT.labels(resource=label)
    gauge.inc()
    started = time.perf_counter()
    try:
        yield
    finally:
        gauge.dec()
        JOB_SECONDS.labels(resource=label).observe(time.perf_counter() - started)


def request_ended(request) -> None:
    """Count a request that reached a terminal status, in whichever process ended it (the
    executor, the API for a cancel, recon for an expiry or an abandon): called by
    api/services/requests.py transition(). A deal's own document has service `deal`."""
    REQUESTS.labels(service=request.service, action=request.action, status=request.status).inc()


def calls_made(resource: str, credits: int) -> None:
    """The integration credits an executed request's calls spent on `resource`."""
    if credits:
        CREDITS_CONSUMED.labels(resource=resource or "none").inc(credits)


def ledger_entry_saved(sender, instance, created: bool, **kwargs) -> None:
    """post_save of api.LedgerEntry (connected in marketplace/apps.py): every credit movement
    in any process, counted once its transaction commits (a rolled-back hold moved nothing)."""
    if not created:
        return
    from django.db import transaction

    kind, amount = instance.kind, instance.amount
    transaction.on_commit(lambda: CREDITS.labels(kind=kind).inc(amount), using=kwargs.get("using"))

"""The executor's Prometheus metrics: requests executing, how long they took, what their calls
spent, upstream retries, fallbacks and circuit breakers, and the shared resources' slots and
budgets (read from Redis at scrape time).

Labels stay bounded: `resource` is a resource map entry, `reason` a failure class; never a
request id, a URL, a header, a credential or a client.
In multiprocess mode (PROMETHEUS_MULTIPROC_DIR, infra/metrics.py) the API's /metrics sums
these over every process of the host; gauges say how (`multiprocess_mode`). Requests that
ended and credits through the ledger are the domain's (api/metrics.py).
"""

import contextlib
import time
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from executor import resources
from infra.stores import redis_connection

# Upper bounds (seconds) of svc_job_seconds' buckets: local handlers take milliseconds, AI
# calls seconds to minutes, and SVC_JOB_TIMEOUT ends a job at 900 s by default.
JOB_SECONDS_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)

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
# Set whenever a process reads or changes a breaker (executor/breaker.py).
BREAKER_STATE = Gauge(
    "svc_breaker_state",
    "Circuit breaker of the resource: 0 closed, 1 half-open, 2 open",
    ["resource"],
    multiprocess_mode="mostrecent",
)
# One per retry (not per first try); reason: timeout, unreachable, 429, 5xx.
UPSTREAM_RETRIES = Counter(
    "svc_upstream_retries_total",
    "Handler calls retried after a retryable upstream failure, by resource and reason",
    ["resource", "reason"],
)
# Calls that went to a fallback handler instead of the offer's own, by the primary's resource
# and why: breaker_open (refused) or failed (its retries were spent).
FALLBACKS = Counter(
    "svc_upstream_fallbacks_total",
    "Requests whose primary handler was skipped or failed and a fallback was tried",
    ["resource", "reason"],
)
# Gateway calls (/v1/chat/completions, executor/relay.py): tokens charged, by direction
# (input, output) and where the count came from (upstream: its `usage`; relayed: the input as
# counted at intake and the output chunks sent), and credits a call cost beyond its hold.
GATEWAY_TOKENS = Counter(
    "svc_gateway_tokens_total",
    "Tokens of the gateway's chat calls that were charged, by direction and source",
    ["direction", "source"],
)
GATEWAY_OVERRUN = Counter(
    "svc_gateway_overrun_credits_total",
    "Credits gateway calls cost beyond what intake held (the hold is captured, no more)",
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


def calls_made(resource: str, credits: int) -> None:
    """The integration credits an executed request's calls spent on `resource`."""
    if credits:
        CREDITS_CONSUMED.labels(resource=resource or "none").inc(credits)


def resource_families():
    """Slots and budgets of every resource of the map, across all hosts (Redis, at scrape time)."""
    in_use = GaugeMetricFamily(
        "svc_resource_slots_in_use",
        "Concurrency slots of the resource held now, by every executor of every host",
        labels=["resource"],
    )
    slots = GaugeMetricFamily(
        "svc_resource_slots",
        "max_concurrency of the resource (absent: unlimited)",
        labels=["resource"],
    )
    budget = GaugeMetricFamily(
        "svc_resource_budget",
        "Integration credits the resource may spend per period",
        labels=["resource"],
    )
    used = GaugeMetricFamily(
        "svc_resource_budget_used",
        "Integration credits the resource spent in the current period",
        labels=["resource"],
    )
    remaining = GaugeMetricFamily(
        "svc_resource_budget_remaining_ratio",
        "Share of the resource's budget left in the current period (1: untouched, 0: spent)",
        labels=["resource"],
    )
    connection = redis_connection()
    for name, resource in sorted(resources.load_resource_map().items()):
        snap = resources.snapshot(resource, connection=connection)
        in_use.add_metric([name], snap["inflight"])
        if resource.max_concurrency:
            slots.add_metric([name], resource.max_concurrency)
        if resource.budget:
            spent = snap["budget_used"] or 0
            budget.add_metric([name], resource.budget)
            used.add_metric([name], spent)
            remaining.add_metric([name], max(0.0, 1 - spent / resource.budget))
    return [in_use, slots, budget, used, remaining]

"""Webhooks' Prometheus metrics: each attempt's outcome and duration (counted by the worker),
and the deliveries waiting (read from SQL at scrape time, so exact across hosts).

Labels stay bounded: `outcome` is one of OUTCOMES, `state` a delivery state; never a URL, a
host, a request id or a client. In multiprocess mode (infra/metrics.py) the API's /metrics
sums the workers' counters with everyone else's.
"""

from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from webhooks.models import WebhookDelivery

# What an attempt came to: a 2xx; 410 Gone (no more attempts); another status; no answer in
# SVC_WEBHOOK_TIMEOUT; no connection; an address refused at send time (DNS rebinding); the
# secret could not be unsealed; anything else.
OUTCOMES = ("delivered", "gone", "http_error", "timeout", "connect_error", "refused", "signing")
OTHER = "error"
# Upper bounds (seconds) of an attempt's duration: receivers answer in milliseconds to
# seconds, SVC_WEBHOOK_TIMEOUT (15 s by default) ends the slow ones.
ATTEMPT_SECONDS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30)

ATTEMPTS = Counter(
    "svc_webhook_attempts_total", "Webhook delivery attempts, by outcome", ["outcome"]
)
ATTEMPT_SECONDS = Histogram(
    "svc_webhook_attempt_seconds",
    "Seconds from an attempt's start to the receiver's answer (or to giving up on it)",
    buckets=ATTEMPT_SECONDS_BUCKETS,
)
ENDED = Counter(
    "svc_webhook_deliveries_ended_total",
    "Webhook deliveries that ended, by state (delivered, failed: retries ran out, stopped: 410)",
    ["state"],
)


def attempt_made(*, outcome: str, seconds: float, state: str) -> None:
    ATTEMPTS.labels(outcome=outcome if outcome in OUTCOMES else OTHER).inc()
    ATTEMPT_SECONDS.observe(seconds)
    if state in (WebhookDelivery.DELIVERED, WebhookDelivery.FAILED, WebhookDelivery.STOPPED):
        ENDED.labels(state=state).inc()


def delivery_families():
    """Deliveries not ended yet, by state, and how late the most overdue pending one is."""
    waiting = GaugeMetricFamily(
        "svc_webhook_deliveries",
        "Webhook deliveries not ended yet, by state (pending: waiting for an attempt)",
        labels=["state"],
    )
    rows = (
        WebhookDelivery.objects.filter(
            state__in=[WebhookDelivery.PENDING, WebhookDelivery.DELIVERING]
        )
        .values("state")
        .annotate(count=Count("pk"))
    )
    counts = {row["state"]: row["count"] for row in rows}
    for state in (WebhookDelivery.PENDING, WebhookDelivery.DELIVERING):
        waiting.add_metric([state], counts.get(state, 0))
    now = timezone.now()
    oldest = WebhookDelivery.objects.filter(
        state=WebhookDelivery.PENDING, next_attempt_at__lte=now
    ).aggregate(due=Min("next_attempt_at"))["due"]
    overdue = GaugeMetricFamily(
        "svc_webhook_overdue_seconds",
        "Seconds the most overdue pending delivery has been due (0: none; workers keep up)",
    )
    overdue.add_metric([], (now - oldest).total_seconds() if oldest else 0)
    return [waiting, overdue]

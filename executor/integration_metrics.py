"""Metrics of upstream integrations (prometheus_client): circuit breakers and retries.

Labels are resource names and failure reasons only: never a URL, a header or a credential.
Exposure across processes is issue 9's (one `/metrics` for every process).
"""

from prometheus_client import Counter, Gauge

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

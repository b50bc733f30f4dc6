"""Retry policy for handler calls: which failures deserve another try, how long to wait
(capped exponential backoff with jitter, or the upstream's `Retry-After`), and the timeouts
of one try. Pure: no Redis, no MongoDB; executor/routes.py applies it.

A failure is retryable when the handler says so (`HandlerError.retryable`): executor/upstream.py
marks timeouts, connection errors, HTTP 429 and 5xx. Business errors (other 4xx, bad params,
missing credentials) fail at once. Every retry must fit before the job's deadline
(SVC_JOB_TIMEOUT), so a request never outlives its job because it was retrying.
"""

import email.utils
import math
import random
from dataclasses import dataclass
from datetime import UTC, datetime

from executor import defaults
from executor.calls import Handler, HandlerError, Timeouts


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = defaults.DEFAULT_MAX_RETRIES
    backoff: float = defaults.DEFAULT_BACKOFF
    backoff_max: float = defaults.DEFAULT_BACKOFF_MAX


def retry_policy(resource, offer_max_retries: int | None) -> RetryPolicy:
    """The resource's policy (resource map), with the offer's `max_retries` when it has one."""
    max_retries = getattr(resource, "max_retries", None)
    if offer_max_retries is not None:
        max_retries = offer_max_retries
    return RetryPolicy(
        max_retries=defaults.DEFAULT_MAX_RETRIES if max_retries is None else max_retries,
        backoff=getattr(resource, "retry_backoff", None) or defaults.DEFAULT_BACKOFF,
        backoff_max=getattr(resource, "retry_backoff_max", None) or defaults.DEFAULT_BACKOFF_MAX,
    )


def backoff_delay(policy: RetryPolicy, retry: int, rng=random.uniform) -> float:
    """Seconds before the `retry`-th retry (1-based): base × 2^(retry-1), capped, then "equal
    jitter" (between half and all of it) so that callers failing together retry apart."""
    ceiling = min(policy.backoff_max, policy.backoff * 2 ** min(retry - 1, 30))
    return rng(ceiling / 2, ceiling)


def next_delay(
    policy: RetryPolicy, error: HandlerError, retries_done: int, time_left: float
) -> float | None:
    """Seconds to wait before retrying after `error`, or None when the call should not be
    retried: not retryable, retries spent, a Retry-After too long, or no time left."""
    if not error.retryable or retries_done >= policy.max_retries:
        return None
    delay = backoff_delay(policy, retries_done + 1)
    if error.retry_after is not None:
        if error.retry_after > defaults.RETRY_AFTER_MAX:
            return None
        delay = max(delay, error.retry_after)
    if delay + defaults.MIN_TRY_SECONDS > time_left:
        return None
    return delay


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header: delta-seconds or an HTTP date; None if absent or
    unreadable (then the backoff alone decides)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if not math.isfinite(seconds):
        return None
    return max(seconds, 0.0)


def try_timeouts(
    handler: Handler, configured: dict | None, params: dict, time_left: float
) -> Timeouts:
    """Timeouts of one try: the handler's defaults, replaced key by key by the `service_map`
    config's `timeouts`, the total by the offer's `params.timeout`; then capped so the try
    ends before the job's deadline (a total as long as the time left is dropped: the job's
    own timeout ends it, with code `timeout`)."""
    base = handler.timeouts
    configured = configured or {}
    connect = configured.get("connect", base.connect)
    read = configured.get("read", base.read)
    total = configured.get("total", base.total)
    param = params.get("timeout")
    if isinstance(param, int | float) and not isinstance(param, bool) and param > 0:
        total = float(param)
    budget = max(time_left - defaults.DEADLINE_MARGIN, 0.001)
    if total is not None and total >= budget:
        total = None
    cap = total if total is not None else budget
    return Timeouts(
        connect=None if connect is None else min(float(connect), cap),
        read=None if read is None else min(float(read), cap),
        total=None if total is None else float(total),
    )

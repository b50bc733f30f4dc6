"""Alerts from recon's health snapshot and repairs, to Discord and to a generic webhook.

    svc:alert:<name>    STRING with a TTL: the condition was sent within SVC_ALERT_REPEAT_MINUTES
    svc:alerts:active   SET of the conditions that fired and have not been resolved yet

Several recon processes may evaluate at once: `SET NX EX` lets one of them send a firing
condition (again only once the key expires), and `SREM` returning 1 lets one of them send its
"resolved". Sending never raises: a webhook that is down or slow costs a log line (its host
only: webhook URLs hold tokens) and, for a firing condition nobody received, a retry on the
next loop.
"""

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from django.conf import settings

from api.health import Health
from infra.stores import redis_connection
from recon import defaults
from recon.metrics import ALERTS_SENT

logger = logging.getLogger(__name__)

ACTIVE_KEY = "svc:alerts:active"
SENT_KEY_PREFIX = "svc:alert:"


@dataclass(frozen=True)
class Condition:
    name: str
    message: str


def conditions(health: Health, repaired: Mapping[str, int]) -> list[Condition]:
    """Everything wrong in this snapshot, one Condition per alert name."""
    found = []
    stuck = _stuck(health, repaired)
    if stuck:
        found.append(Condition("stuck_requests", stuck))
    for name, queue in health.queues.items():
        waited = queue.oldest_seconds >= settings.SVC_ALERT_NO_EXECUTOR_SECONDS
        if queue.depth > 0 and queue.live_executors == 0 and waited:
            message = f"{queue.depth} jobs wait in {name}, no live executor"
            found.append(Condition(f"no_executor:{name}", message))
    for name, use in health.near_budget.items():
        message = f"{name}: {use.used} of {use.budget} credits spent this {use.period}"
        found.append(Condition(f"budget:{name}", message))
    if (
        health.finished >= defaults.ERROR_RATE_MIN_FINISHED
        and health.error_rate > settings.SVC_ALERT_ERROR_RATE
    ):
        found.append(
            Condition(
                "error_rate",
                f"{health.failed} of {health.finished} requests failed "
                f"in the last {health.error_minutes} min",
            )
        )
    return found


def _stuck(health: Health, repaired: Mapping[str, int]) -> str:
    parts = []
    limit = settings.SVC_ALERT_STUCK_SECONDS
    for name, queue in health.queues.items():
        if queue.oldest_seconds > limit:
            parts.append(f"{name}: oldest queued request waited {queue.oldest_seconds:.0f}s")
    if repaired.get("abandoned"):
        parts.append(f"{repaired['abandoned']} requests abandoned (their executors kept dying)")
    return "; ".join(parts)


def evaluate(health: Health, repaired: Mapping[str, int]) -> list[tuple[str, str]]:
    """Send what changed since the last evaluation (any recon process's); returns what was
    sent, as (name, "firing" | "resolved")."""
    connection = redis_connection()
    firing = {c.name: c for c in conditions(health, repaired)}
    sent = []
    repeat = settings.SVC_ALERT_REPEAT_MINUTES * 60
    for name, condition in firing.items():
        connection.sadd(ACTIVE_KEY, name)
        if not connection.set(SENT_KEY_PREFIX + name, 1, nx=True, ex=repeat):
            continue  # sent within SVC_ALERT_REPEAT_MINUTES
        if notify(name, "firing", condition.message, health):
            sent.append((name, "firing"))
        else:  # nobody got it: try again next loop
            connection.delete(SENT_KEY_PREFIX + name)
    for raw in connection.smembers(ACTIVE_KEY):
        name = raw.decode()
        if name in firing or not connection.srem(ACTIVE_KEY, name):
            continue  # still firing, or another recon process resolved it
        connection.delete(SENT_KEY_PREFIX + name)
        notify(name, "resolved", f"{name} cleared", health)
        sent.append((name, "resolved"))
    return sent


def notify(name: str, state: str, message: str, health: Health) -> bool:
    """Post to each configured webhook; True if one of them took it (or none is configured)."""
    log = logger.warning if state == "firing" else logger.info
    log("alert %s %s: %s", name, state, message)
    posts = []
    if settings.DISCORD_WEBHOOK_URL:
        content = f"[{state}] {name}: {message}"[: defaults.DISCORD_MAX_CHARS]
        posts.append(("discord", settings.DISCORD_WEBHOOK_URL, {"content": content}))
    if settings.SVC_ALERT_WEBHOOK_URL:
        body = {"alert": name, "state": state, "message": message, "at": health.at.isoformat()}
        posts.append(("webhook", settings.SVC_ALERT_WEBHOOK_URL, body))
    delivered = [_post(kind, url, body) for kind, url, body in posts]
    return not posts or any(delivered)


def _post(kind: str, url: str, body: dict) -> bool:
    try:
        response = httpx.post(url, json=body, timeout=defaults.SEND_TIMEOUT)
        response.raise_for_status()
    except (httpx.HTTPError, ValueError) as exc:
        # The URL carries the webhook's token: name its host only, and the error's class.
        logger.warning("alert webhook at %s failed: %s", _host(url), type(exc).__name__)
        ALERTS_SENT.labels(kind=kind, outcome="failed").inc()
        return False
    ALERTS_SENT.labels(kind=kind, outcome="delivered").inc()
    return True


def _host(url: str) -> str:
    try:
        return httpx.URL(url).host or "?"
    except (httpx.InvalidURL, ValueError):
        return "?"

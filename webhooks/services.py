"""Webhooks' services: what intake, settlement, the account endpoints, the admin and the worker
call. Nothing here sends: the worker (webhooks/worker.py) does, in a process of its own.

- `webhook_for_intake`: the webhook an intake POST names (`?webhook=…&webhook_events=…`) or
  the account default, checked, to store on the request document.
- `webhook_notify`: an event of a request becomes a WebhookDelivery, due now, in the caller's
  transaction (settlement's, with the charge); the worker is woken once it commits.
- The account default and the signing secret: `webhook_settings_get/set/clear`,
  `webhook_secret_rotate`.
- The worker's steps: `delivery_claim` (conditional UPDATEs: two workers never hold one
  delivery), `delivery_signing_secrets`, `delivery_record` (the attempt, then the next state).

The signing secret: every client that has a webhook has one, so every delivery is signed. It is
made, unseen, by the first `webhook_for_intake` or `webhook_settings_set` that needs it; the
client reads a secret only from a rotation (`POST /svc/account/webhook_secret/`), which answers
the new one once. Rotating a secret that was never shown drops it at once (nobody verifies with
it); rotating one the client had keeps it signing too for ROTATION_OVERLAP_HOURS.
"""

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.fernet import InvalidToken
from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.db.models import F, Q
from django.utils import timezone
from redis import RedisError

from api.errors import ApplicationError
from api.shapes import iso
from configs.protocol import ConfigError
from infra.stores import redis_connection
from webhooks import defaults
from webhooks.addresses import check_webhook_url
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSettings, seal, unseal
from webhooks.signing import new_secret

logger = logging.getLogger("webhooks")


class SigningUnavailable(Exception):
    """The client's secret cannot be made or unsealed (CONFIG_FERNET_KEY missing or changed)."""


@dataclass(frozen=True)
class AttemptResult:
    """What one attempt got: a status (None: no answer) or an error, and how long it took."""

    started_at: datetime
    latency_ms: int
    status_code: int | None = None
    excerpt: str = ""
    error: str = ""


# --- intake and settlement ------------------------------------------------------------------


def webhook_for_intake(*, user_id: int, query) -> dict | None:
    """The webhook an intake POST's query string names, else the account default, else None.

    `?webhook=<url>` (checked: https, public) with `&webhook_events=start,completed` (default
    `completed`); `webhook_events` alone applies to the account default URL."""
    urls = _query_values(query, "webhook")
    raw_events = _query_values(query, "webhook_events")
    if len(urls) > 1 or len(raw_events) > 1:
        raise _invalid("give webhook and webhook_events at most once each")
    found = WebhookSettings.objects.filter(user_id=user_id).first()
    if not urls and not raw_events:
        if found is None or not found.url:
            return None
        return {"url": found.url, "events": list(found.events or defaults.DEFAULT_EVENTS)}
    events = webhook_events(raw_events[0]) if raw_events else list(defaults.DEFAULT_EVENTS)
    if urls:
        url = check_webhook_url(urls[0])
    elif found is not None and found.url:
        url = found.url
    else:
        raise _invalid(
            "webhook_events needs a webhook: add ?webhook=<url> or set an account default "
            "with PUT /svc/account/webhook/"
        )
    if found is None:
        _settings_for(user_id)  # the secret its deliveries will be signed with
    return {"url": url, "events": events}


def webhook_notify(
    *, user_id: int, request_id: str, webhook: dict | None, event: str, body: dict
) -> None:
    """Queue the delivery of `event` if the request's webhook asked for it. A second notice of
    the same request and event is a no-op. Safe inside the caller's transaction: the delivery
    commits (and the worker is woken) with it. Never raises for a webhook's problems."""
    if not isinstance(webhook, dict) or event not in (webhook.get("events") or ()):
        return
    url = webhook.get("url")
    if not isinstance(url, str) or not url:
        logger.warning("webhook without a URL skipped request_id=%s event=%s", request_id, event)
        return
    try:
        payload = _payload(event, body)
    except (TypeError, ValueError):
        logger.exception("webhook body cannot be JSON request_id=%s event=%s", request_id, event)
        return
    delivery, created = WebhookDelivery.objects.get_or_create(
        webhook_id=webhook_id_for(request_id=request_id, event=event),
        defaults={
            "user_id": user_id,
            "request_id": request_id,
            "event": event,
            "url": url,
            "payload": payload,
            "next_attempt_at": timezone.now(),
        },
    )
    if created:
        logger.info(
            "webhook queued id=%s request_id=%s event=%s", delivery.webhook_id, request_id, event
        )
        _wake_on_commit()


def webhook_id_for(*, request_id: str, event: str) -> str:
    """The `webhook-id` of a request's event: the same for every attempt and every notice."""
    return "msg_" + hashlib.sha256(f"{request_id}:{event}".encode()).hexdigest()[:32]


# --- the account default and the secret -----------------------------------------------------


def webhook_settings_get(*, user) -> dict:
    """`{"url", "events", "has_secret"}`; has_secret: the client has been given a secret."""
    return _settings_repr(WebhookSettings.objects.filter(user=user).first())


def webhook_settings_set(*, user, url: str, events: list[str] | None = None) -> dict:
    url = check_webhook_url(url)
    chosen = list(defaults.DEFAULT_EVENTS) if events is None else webhook_events(events)
    row = _settings_for(user.pk)
    row.url, row.events = url, chosen
    row.save(update_fields=["url", "events", "updated_at"])
    return _settings_repr(row)


def webhook_settings_clear(*, user) -> dict:
    """No account default any more; the secret stays (per-request webhooks are signed with it)."""
    WebhookSettings.objects.filter(user=user).update(url="", events=[], updated_at=timezone.now())
    return webhook_settings_get(user=user)


def webhook_secret_rotate(*, user) -> str:
    """A new signing secret, returned this once. The one before it, if the client had it, still
    signs for ROTATION_OVERLAP_HOURS; the previous one of that is dropped."""
    secret = new_secret()
    now = timezone.now()
    with transaction.atomic():
        row = _settings_for(user.pk, lock=True)
        if row.rotated_at is not None:  # the client has the current one: overlap
            row.previous_secret_sealed = row.secret_sealed
            row.previous_until = now + timedelta(hours=defaults.ROTATION_OVERLAP_HOURS)
        else:
            row.previous_secret_sealed, row.previous_until = "", None
        row.secret_sealed = _sealed(secret)
        row.rotated_at = now
        row.save()
    logger.info("webhook secret rotated client=%s", user.pk)
    return secret


def webhook_previous_valid_until(*, user) -> datetime | None:
    """Until when the secret before the current one still signs (None: it does not)."""
    row = WebhookSettings.objects.filter(user=user).first()
    if row is None or not row.previous_secret_sealed or row.previous_until is None:
        return None
    return row.previous_until if row.previous_until > timezone.now() else None


def webhook_events(raw) -> list[str]:
    """Event names (a list, or a comma-separated string), known ones only, in EVENTS order."""
    names = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise _invalid("webhook events must be a list of names: " + ", ".join(defaults.EVENTS))
    names = [name.strip() for name in names if name.strip()]
    unknown = sorted(set(names) - set(defaults.EVENTS))
    if unknown:
        shown = ", ".join(repr(name[:40]) for name in unknown[:5])
        raise _invalid(f"unknown webhook event {shown}; known: " + ", ".join(defaults.EVENTS))
    if not names:
        raise _invalid("name at least one webhook event: " + ", ".join(defaults.EVENTS))
    return [event for event in defaults.EVENTS if event in names]


# --- the admin ------------------------------------------------------------------------------


def webhook_redeliver(*, delivery: WebhookDelivery) -> None:
    """Send again, now, with the same webhook-id; attempt numbers go on. A delivery a worker is
    sending right now is left to it."""
    now = timezone.now()
    WebhookDelivery.objects.filter(pk=delivery.pk).exclude(
        state=WebhookDelivery.DELIVERING, claimed_until__gt=now
    ).update(state=WebhookDelivery.PENDING, next_attempt_at=now, claimed_until=None)
    _wake_on_commit()


# --- the worker -----------------------------------------------------------------------------


def delivery_prune(*, older_than: datetime, limit: int = defaults.PRUNE_BATCH) -> int:
    """Delete ended deliveries (delivered, failed, stopped) created before `older_than`, with
    their attempts, at most `limit` of them; how many went. Pending ones are never pruned."""
    ended = (WebhookDelivery.DELIVERED, WebhookDelivery.FAILED, WebhookDelivery.STOPPED)
    ids = list(
        WebhookDelivery.objects.filter(state__in=ended, created_at__lt=older_than)
        .order_by("created_at")
        .values_list("pk", flat=True)[:limit]
    )
    if ids:
        WebhookDelivery.objects.filter(pk__in=ids).delete()
        logger.info("webhook deliveries pruned: %d (ended before %s)", len(ids), older_than)
    return len(ids)


def delivery_claim(*, limit: int) -> list[WebhookDelivery]:
    """Up to `limit` due deliveries, now this worker's until their lease ends: pending ones due,
    and delivering ones whose worker's lease ran out (it died). Each is taken by a conditional
    UPDATE of the state and lease it was read with, so of two workers only one gets it."""
    if limit < 1:
        return []
    now = timezone.now()
    due = Q(state=WebhookDelivery.PENDING, next_attempt_at__lte=now) | Q(
        state=WebhookDelivery.DELIVERING, claimed_until__lt=now
    )
    seen = WebhookDelivery.objects.filter(due).order_by("next_attempt_at", "pk")
    lease = now + timedelta(seconds=settings.SVC_WEBHOOK_TIMEOUT + defaults.LEASE_MARGIN_SECONDS)
    claimed = [
        pk
        for pk, state, until in seen.values_list("pk", "state", "claimed_until")[:limit]
        if WebhookDelivery.objects.filter(pk=pk, state=state, claimed_until=until).update(
            state=WebhookDelivery.DELIVERING, claimed_until=lease, attempts=F("attempts") + 1
        )
    ]
    return list(WebhookDelivery.objects.filter(pk__in=claimed).order_by("next_attempt_at", "pk"))


def delivery_signing_secrets(*, delivery: WebhookDelivery) -> list[str]:
    """The secrets this attempt is signed with: the current one, and the previous one while it
    still signs."""
    try:
        row = _settings_for(delivery.user_id)
        found = [unseal(row.secret_sealed)]
        previous_until = row.previous_until
        if row.previous_secret_sealed and previous_until and previous_until > timezone.now():
            found.append(unseal(row.previous_secret_sealed))
    except (ApplicationError, ConfigError, InvalidToken):
        raise SigningUnavailable("the client's signing secret cannot be unsealed") from None
    return found


def delivery_record(*, delivery: WebhookDelivery, result: AttemptResult) -> str:
    """Keep the attempt, then move the delivery on: delivered (2xx), stopped (410), pending
    again after the schedule's next delay, or failed once the schedule ran out. Returns the new
    state, or "superseded" if the delivery is no longer this claim's (redelivered, or retaken
    after the lease ran out): the attempt is kept, the state left to the new owner."""
    state, fields = _next_state(delivery, result)
    with transaction.atomic():
        WebhookAttempt.objects.create(
            delivery=delivery,
            number=delivery.attempts,
            started_at=result.started_at,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            response_excerpt=result.excerpt[: defaults.EXCERPT_CHARS],
            error=result.error[: defaults.ERROR_CHARS],
        )
        kept = WebhookDelivery.objects.filter(
            pk=delivery.pk, state=WebhookDelivery.DELIVERING, claimed_until=delivery.claimed_until
        ).update(**fields)
    if not kept:
        return "superseded"
    for name, value in fields.items():  # the instance shows what was written
        setattr(delivery, name, value)
    return state


def _next_state(delivery: WebhookDelivery, result: AttemptResult) -> tuple[str, dict]:
    now, status = timezone.now(), result.status_code
    fields = {"claimed_until": None, "next_attempt_at": None, "last_status": status}
    fields["last_error"] = result.error[: defaults.ERROR_CHARS]
    schedule = settings.SVC_WEBHOOK_RETRY_SCHEDULE
    if status is not None and 200 <= status < 300:
        state, fields["delivered_at"] = WebhookDelivery.DELIVERED, now
    elif status == 410:
        state = WebhookDelivery.STOPPED
    elif delivery.attempts > len(schedule):
        state = WebhookDelivery.FAILED
    else:
        state = WebhookDelivery.PENDING
        spread = 1 + random.uniform(-defaults.RETRY_JITTER, defaults.RETRY_JITTER)
        fields["next_attempt_at"] = now + timedelta(
            seconds=schedule[delivery.attempts - 1] * spread
        )
    return state, {**fields, "state": state}


# --- helpers --------------------------------------------------------------------------------


def _settings_for(user_id: int, *, lock: bool = False) -> WebhookSettings:
    """The client's settings row, made (with a new, unshown secret) if it has none."""
    rows = WebhookSettings.objects.select_for_update() if lock else WebhookSettings.objects
    found = rows.filter(user_id=user_id).first()
    if found is not None:
        return found
    row, _ = WebhookSettings.objects.get_or_create(
        user_id=user_id, defaults={"secret_sealed": _sealed(new_secret())}
    )
    return row


def _sealed(secret: str) -> str:
    try:
        return seal(secret)
    except ConfigError as exc:
        logger.error("webhooks: cannot seal a signing secret: %s", exc)
        raise ApplicationError(
            "unavailable", "webhooks are unavailable on this server right now", status=503
        ) from None


def _settings_repr(row: WebhookSettings | None) -> dict:
    if row is None or not row.url:
        return {"url": None, "events": [], "has_secret": bool(row and row.rotated_at)}
    return {"url": row.url, "events": list(row.events), "has_secret": row.rotated_at is not None}


def _payload(event: str, body: dict) -> str:
    """The Standard Webhooks envelope: type, when the event happened, and the data."""
    envelope = {
        "type": f"request.{event}",
        "timestamp": iso(timezone.now()),
        "data": body,
    }
    return json.dumps(envelope, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False)


def _query_values(query, name: str) -> list[str]:
    if hasattr(query, "getlist"):
        return query.getlist(name)
    value = query.get(name)
    return [] if value is None else [value]


def _wake_on_commit() -> None:
    transaction.on_commit(_wake, robust=True)


def _wake() -> None:
    """Tell an idle worker there is work (it would find it within POLL_SECONDS anyway)."""
    try:
        pipe = redis_connection().pipeline(transaction=False)
        pipe.lpush(defaults.WAKE_KEY, 1)
        pipe.ltrim(defaults.WAKE_KEY, 0, defaults.WAKE_MAX - 1)
        pipe.execute()
    except RedisError as exc:
        logger.warning("webhooks: cannot wake the worker (%s); it polls", type(exc).__name__)


def _invalid(message: str) -> ApplicationError:
    return ApplicationError("invalid_webhook", message, status=400)

"""API keys: create (the only moment the key is seen), revoke, and authenticate.

Authentication costs one indexed query (the key's hash, joined to its user), and a write at
most once a minute per key (its last-used time). A revoked key is refused from the next
request on, in every API process: there is no cache to invalidate.
"""

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Q

from api import defaults
from api.errors import ApplicationError
from api.keys import ApiKey, is_typed, key_environment, key_generate, key_hash, pattern_allows
from api.services.requests import now

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CreatedKey:
    key: ApiKey
    secret: str  # shown to its owner once, never stored


def key_create(
    *,
    user,
    name: str,
    created_by: str = "",
    can_manage_keys: bool = False,
    allowed: list[str] | None = None,
    budget: int | None = None,
    budget_period: str = "month",
    rate_per_minute: int | None = None,
    max_in_flight: int | None = None,
    expires_at: datetime | None = None,
    environment: str | None = None,
) -> CreatedKey:
    """A new key for `user`. The returned `secret` is the only copy of the key."""
    key = ApiKey(
        user=user,
        name=name,
        can_manage_keys=can_manage_keys,
        allowed=list(allowed or []),
        budget=budget,
        budget_period=budget_period,
        rate_per_minute=rate_per_minute,
        max_in_flight=max_in_flight,
        expires_at=expires_at,
    )
    key.full_clean(exclude=["user", "environment"])
    return key_issue(key=key, created_by=created_by, environment=environment)


def key_issue(*, key: ApiKey, created_by: str = "", environment: str | None = None) -> CreatedKey:
    """Give the unsaved `key` (its owner and limits set: the admin's form fills them) a new
    secret, and save it. The returned `secret` is the only copy."""
    key.environment = environment or settings.SVC_API_KEY_ENVIRONMENT
    secret = key_generate(key.environment)
    key.hashed = key_hash(secret)
    key.prefix = secret[: len("svc_live_") + 4]
    key.last_four = secret[-4:]
    key.created_by = created_by
    key.save()
    logger.info("api key created id=%s client=%s by=%s", key.pk, key.user_id, created_by or "-")
    return CreatedKey(key=key, secret=secret)


def key_create_for_client(*, user, by: ApiKey, **fields) -> CreatedKey:
    """A key a client creates for itself over the API (with a key that may manage keys)."""
    if ApiKey.objects.filter(user=user, revoked_at=None).count() >= defaults.MAX_KEYS_PER_CLIENT:
        raise ApplicationError(
            "key_limit_reached",
            f"a client may hold {defaults.MAX_KEYS_PER_CLIENT} keys; revoke some first",
            status=409,
        )
    return key_create(user=user, created_by=f"key {by.pk} ({by.display})", **fields)


def key_revoke(*, key: ApiKey, by: str = "") -> bool:
    """Revoke `key` now; False if it was revoked already."""
    with transaction.atomic():
        revoked = ApiKey.objects.filter(pk=key.pk, revoked_at=None).update(revoked_at=now())
    key.refresh_from_db(fields=["revoked_at"])
    if revoked:
        logger.info("api key revoked id=%s client=%s by=%s", key.pk, key.user_id, by or "-")
    return bool(revoked)


def key_authenticate(raw: str) -> ApiKey:
    """The active key `raw` is, with its user loaded; ApplicationError 401 for anything else.

    A typed key with a bad checksum or of the other environment is refused before any
    query; an older untyped token (migrated from DRF) is looked up by its hash as well.
    """
    if is_typed(raw):
        environment = key_environment(raw)
        if environment is None:
            raise _refused("malformed API key (bad format or checksum)")
        if environment != settings.SVC_API_KEY_ENVIRONMENT:
            raise _refused(
                f"a {environment} key cannot be used on this {settings.SVC_API_KEY_ENVIRONMENT} "
                "deployment"
            )
    elif not raw or len(raw) > defaults.MAX_LEGACY_TOKEN_CHARS:
        raise _refused("invalid API key")
    key = ApiKey.objects.select_related("user").filter(hashed=key_hash(raw)).first()
    at = now()
    if key is None:
        raise _refused("invalid API key")
    if key.state(at) != "active":
        raise _refused(f"this API key is {key.state(at)}")
    if not key.user.is_active:
        raise _refused("this client is inactive")
    _touch(key, at)
    return key


def _touch(key: ApiKey, at: datetime) -> None:
    """Record the key's use, at most once per LAST_USED_RESOLUTION (a conditional update, so
    concurrent requests write it once)."""
    if key.last_used_at is not None and at - key.last_used_at < defaults.LAST_USED_RESOLUTION:
        return
    stale = at - defaults.LAST_USED_RESOLUTION
    ApiKey.objects.filter(Q(last_used_at=None) | Q(last_used_at__lt=stale), pk=key.pk).update(
        last_used_at=at
    )
    key.last_used_at = at


def key_check_allowed(*, key: ApiKey | None, target: str) -> None:
    """403 unless `key` may call `target` ("service/action" or "deal/<name>")."""
    if key is not None and not pattern_allows(key.allowed, target):
        raise ApplicationError(
            "key_not_allowed",
            f"this API key may not call {target} (allowed: {', '.join(key.allowed)})",
            status=403,
        )


def key_require_manager(key: ApiKey | None) -> None:
    if key is None or not key.can_manage_keys:
        raise ApplicationError(
            "forbidden",
            "this API key cannot manage keys; use a key created with can_manage_keys",
            status=403,
        )


def expiry_from_days(days: int | None) -> datetime | None:
    return None if days is None else now() + timedelta(days=days)


def _refused(message: str) -> ApplicationError:
    return ApplicationError("not_authenticated", message, status=401)

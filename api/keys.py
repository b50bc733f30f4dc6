"""API keys: their format, the hash that is all we store of them, and their limits.

A key reads `svc_<live|test>_<36 base62><6-char checksum>`, like GitHub's tokens: the typed
prefix lets secret scanners match it, and the checksum (CRC32 of the random part, base62)
lets the API refuse a mistyped or made-up key without a database query. A key is shown once,
when it is created; the database keeps its SHA-256 (the key has 214 random bits, so a fast
hash is enough), a display prefix and its last four characters.
"""

import hashlib
import re
import secrets
import zlib
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
LIVE, TEST = "live", "test"
RANDOM_CHARS = 36
CHECKSUM_CHARS = 6
KEY_PATTERN = re.compile(rf"svc_(live|test)_([0-9A-Za-z]{{{RANDOM_CHARS + CHECKSUM_CHARS},}})")
DAY, WEEK, MONTH = "day", "week", "month"
PERIODS = [(DAY, "day"), (WEEK, "week (from Monday)"), (MONTH, "month")]
# The part of a pattern that names a deal rather than an offer's service.
DEAL_PATTERN_PREFIX = "deal/"


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, digit = divmod(number, 62)
        digits.append(BASE62[digit])
    return "".join(reversed(digits)).rjust(width, "0")


def checksum(random_part: str) -> str:
    return _base62(zlib.crc32(random_part.encode()), CHECKSUM_CHARS)


def key_generate(environment: str) -> str:
    random_part = "".join(secrets.choice(BASE62) for _ in range(RANDOM_CHARS))
    return f"svc_{environment}_{random_part}{checksum(random_part)}"


def key_environment(raw: str) -> str | None:
    """`live` or `test` for a well-formed key with a valid checksum; None for anything else
    that starts like one. (Keys of the older format carry no checksum: see `is_typed`.)"""
    match = KEY_PATTERN.fullmatch(raw)
    if match is None:
        return None
    body = match.group(2)
    if checksum(body[:-CHECKSUM_CHARS]) != body[-CHECKSUM_CHARS:]:
        return None
    return match.group(1)


def is_typed(raw: str) -> bool:
    return raw.startswith("svc_")


def key_hash(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8", "surrogatepass")).hexdigest()


def period_start(period: str, at: datetime) -> datetime:
    """The UTC start of the budget period `at` falls in (OpenRouter's resets: midnight UTC,
    Monday for weeks, the 1st for months)."""
    day = at.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if period == WEEK:
        return day - timedelta(days=day.weekday())
    if period == MONTH:
        return day.replace(day=1)
    return day


def period_end(period: str, start: datetime) -> datetime:
    if period == WEEK:
        return start + timedelta(days=7)
    if period == MONTH:
        return (start + timedelta(days=32)).replace(day=1)
    return start + timedelta(days=1)


def validate_patterns(value) -> None:
    if not isinstance(value, list) or not all(isinstance(p, str) and p for p in value):
        raise ValidationError(
            'a list of "service/action" patterns, e.g. ["text/*", "deal/starter"]'
        )
    bad = [p for p in value if p.count("/") != 1 and p != "*"]
    if bad:
        raise ValidationError(f'patterns must read "service/action" ("*" allowed): {bad}')


def pattern_allows(patterns: list[str], target: str) -> bool:
    """Whether `target` ("service/action", or "deal/<name>") matches one of `patterns`; an
    empty list allows everything."""
    return not patterns or any(fnmatchcase(target, p) for p in patterns)


class ApiKey(models.Model):
    """A client's API key. Only api/services/keys.py creates or revokes them, and only
    api/services/accounts.py moves their budget and in-flight counters (with the ledger)."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_keys"
    )
    name = models.CharField(max_length=100)
    environment = models.CharField(max_length=4, choices=[(LIVE, LIVE), (TEST, TEST)])
    hashed = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=20, editable=False, help_text="shown to tell keys apart")
    last_four = models.CharField(max_length=4, editable=False)
    # A token of the older format (DRF's authtoken) migrated here: it keeps working until
    # revoked, without the typed prefix.
    legacy = models.BooleanField(default=False, editable=False)
    can_manage_keys = models.BooleanField(
        default=False, help_text="may list, create and revoke the client's keys over the API"
    )
    allowed = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_patterns],
        help_text='offers and deals it may call: "service/action" patterns such as "text/*" '
        'or "deal/starter"; empty: all',
    )
    budget = models.PositiveBigIntegerField(
        null=True, blank=True, help_text="credits per period (held ones count); empty: none"
    )
    budget_period = models.CharField(max_length=5, choices=PERIODS, default=MONTH)
    rate_per_minute = models.PositiveIntegerField(
        null=True, blank=True, help_text="intake requests per minute; empty: the client's rate"
    )
    max_in_flight = models.PositiveIntegerField(
        null=True, blank=True, help_text="requests held but not yet settled; empty: no limit"
    )
    # Counters, moved in the ledger's transactions: credits captured or held in the period
    # starting at `period_start`, and requests held and not yet settled.
    period_start = models.DateTimeField(null=True, blank=True, editable=False)
    period_spent = models.PositiveBigIntegerField(default=0, editable=False)
    in_flight = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.CharField(max_length=150, blank=True, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        app_label = "api"
        verbose_name = "API key"
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["user", "-created_at"], name="apikey_user_created")]

    def __str__(self) -> str:
        return f"{self.display} ({self.name})"

    @property
    def display(self) -> str:
        return f"{self.prefix}…{self.last_four}"

    def state(self, at: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= at:
            return "expired"
        return "active"

    def spent_in_period(self, at: datetime) -> int:
        current = period_start(self.budget_period, at)
        return self.period_spent if self.period_start == current else 0

"""A client's webhook settings (default URL and events, the signing secret), each delivery of
an event to a URL, and each attempt at it.

Secrets are stored sealed with the config keys (configs/keys.py, CONFIG_FERNET_KEY): SQL never
holds one in clear, and a rotation of those keys (`manage.py config rotate-keys`) keeps
working because MultiFernet decrypts with any of them.
"""

from django.conf import settings
from django.db import models

from configs import keys


def seal(secret: str) -> str:
    return keys.fernet().encrypt(secret.encode()).decode()


def unseal(sealed: str) -> str:
    return keys.fernet().decrypt(sealed.encode()).decode()


class WebhookSettings(models.Model):
    """One per client: its account default webhook, and the secret every delivery to it
    (default or per request) is signed with. A row always holds a secret: it is made with one."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_settings"
    )
    url = models.CharField(max_length=2048, blank=True, help_text="blank: no default webhook")
    events = models.JSONField(default=list, blank=True)
    secret_sealed = models.TextField(editable=False)
    # After a rotation, the secret before it signs too, until previous_until.
    previous_secret_sealed = models.TextField(blank=True, editable=False)
    previous_until = models.DateTimeField(null=True, blank=True)
    # When the client was last given a secret (POST /svc/account/webhook_secret/); null: the
    # secret was made for the first delivery and never shown, so nobody can verify with it.
    rotated_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "webhook settings"
        verbose_name_plural = "webhook settings"

    def __str__(self) -> str:
        return f"webhooks of {self.user_id}"


class WebhookDelivery(models.Model):
    """One event of one request for one URL, with the payload exactly as every attempt sends
    it. `webhook_id` is derived from the request and the event, so it is the same on every
    attempt (receivers deduplicate on it) and a second notice of the same event adds nothing."""

    PENDING = "pending"  # due at next_attempt_at
    DELIVERING = "delivering"  # a worker holds it until claimed_until
    DELIVERED = "delivered"  # a 2xx answer
    FAILED = "failed"  # the retry schedule ran out
    STOPPED = "stopped"  # the receiver answered 410 Gone: no more attempts
    STATES = [(s, s) for s in (PENDING, DELIVERING, DELIVERED, FAILED, STOPPED)]
    EVENTS = [("start", "start"), ("completed", "completed")]

    webhook_id = models.CharField(max_length=64, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="webhook_deliveries"
    )
    request_id = models.CharField(max_length=64, db_index=True)
    event = models.CharField(max_length=20, choices=EVENTS)
    url = models.CharField(max_length=2048)
    payload = models.TextField(help_text="the body, exactly as every attempt sends it")
    state = models.CharField(max_length=20, choices=STATES, default=PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True, db_index=True)
    claimed_until = models.DateTimeField(null=True, blank=True)
    last_status = models.PositiveSmallIntegerField(null=True, blank=True)
    last_error = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        indexes = [models.Index(fields=["state", "next_attempt_at"], name="webhook_due")]

    def __str__(self) -> str:
        return f"{self.webhook_id} ({self.event} of {self.request_id})"


class WebhookAttempt(models.Model):
    """One try at a delivery: what the receiver answered, or why there was no answer. Never the
    request's headers (its signature) nor anything of the secret."""

    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.CASCADE, related_name="attempt_records"
    )
    number = models.PositiveIntegerField()
    started_at = models.DateTimeField()
    status_code = models.PositiveSmallIntegerField(
        null=True, blank=True, help_text="none: no answer (timeout, connection error, refused)"
    )
    latency_ms = models.PositiveIntegerField(default=0)
    response_excerpt = models.TextField(blank=True)
    error = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="webhook_attempt_number")
        ]

    def __str__(self) -> str:
        return f"attempt {self.number} of {self.delivery_id}"

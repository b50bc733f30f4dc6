"""Admin for webhooks: every delivery with its attempts (what each receiver answered), a
"redeliver" action, and the clients' webhook settings. No page shows a secret: settings show
whether the client was given one and when, never the sealed value.

Deliveries change only through the worker and services: a delivery's page is view-only.
Redelivering needs the "change" permission on deliveries (superusers; support views only) and
is recorded in the audit trail (auditlog, as api/admin/audit.py records its actions).
"""

from auditlog.models import LogEntry
from django.contrib import admin, messages
from django.db import transaction

from infra.admin_pages import ReadOnlyAdmin
from infra.client_ip import client_ip
from webhooks.models import WebhookAttempt, WebhookDelivery, WebhookSettings
from webhooks.services import webhook_redeliver

DELIVERY_FIELDS = [
    "webhook_id",
    "user",
    "request_id",
    "event",
    "url",
    "state",
    "attempts",
    "next_attempt_at",
    "claimed_until",
    "last_status",
    "last_error",
    "created_at",
    "delivered_at",
    "payload",
]


class WebhookAttemptInline(admin.TabularInline):
    model = WebhookAttempt
    fields = ["number", "started_at", "status_code", "latency_ms", "error", "response_excerpt"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "webhook_id",
        "event",
        "request_id",
        "user",
        "state",
        "attempts",
        "last_status",
        "next_attempt_at",
        "created_at",
    ]
    list_filter = ["state", "event", "last_status", "created_at"]
    list_select_related = ["user"]
    search_fields = ["=request_id", "=webhook_id", "user__username"]
    fields = DELIVERY_FIELDS
    readonly_fields = DELIVERY_FIELDS
    inlines = [WebhookAttemptInline]
    actions = ["redeliver"]

    def has_change_permission(self, request, obj=None):
        # The list's action needs "change"; an object's page is view-only for everybody (a
        # stale form must never overwrite a state the worker just moved).
        return obj is None and request.user.has_perm("webhooks.change_webhookdelivery")

    @admin.action(
        description="Redeliver the selected webhooks (same webhook-id)", permissions=["change"]
    )
    def redeliver(self, request, queryset):
        for delivery in queryset:
            _redeliver_audited(request, delivery)
        self.message_user(
            request,
            f"Queued {queryset.count()} webhook(s) for redelivery; the worker sends them now "
            "(one being sent right now is left to its attempt).",
            messages.SUCCESS,
        )


def _redeliver_audited(request, delivery: WebhookDelivery) -> None:
    """The redelivery and its audit entry commit together."""
    with transaction.atomic():
        before = delivery.state
        webhook_redeliver(delivery=delivery)
        delivery.refresh_from_db(fields=["state"])
        LogEntry.objects.log_create(
            delivery,
            action=LogEntry.Action.UPDATE,
            changes={"state": [before, delivery.state]},
            actor=request.user,
            remote_addr=client_ip(request) or None,
            additional_data={"admin_action": "redeliver", "webhook_id": delivery.webhook_id},
        )


@admin.register(WebhookSettings)
class WebhookSettingsAdmin(ReadOnlyAdmin):
    list_display = ["user", "url", "events", "has_secret", "rotated_at", "previous_until"]
    list_select_related = ["user"]
    search_fields = ["user__username", "url"]
    # Never the sealed secrets: not even ciphertext belongs on a page.
    fields = ["user", "url", "events", "has_secret", "rotated_at", "previous_until", "updated_at"]
    readonly_fields = fields

    @admin.display(boolean=True, description="secret given")
    def has_secret(self, obj: WebhookSettings) -> bool:
        return obj.rotated_at is not None

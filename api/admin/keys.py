"""Admin for API keys: issue one (shown once, on the page that creates it), edit its name and
limits, revoke. The secret is never stored, so no page can show it again."""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.db import transaction
from django.template.response import TemplateResponse

from api.admin.audit import action_logged
from api.keys import ApiKey
from api.services.keys import key_issue, key_revoke
from api.services.requests import now


class ApiKeyForm(forms.ModelForm):
    class Meta:
        model = ApiKey
        fields = [
            "user",
            "name",
            "can_manage_keys",
            "allowed",
            "budget",
            "budget_period",
            "rate_per_minute",
            "max_in_flight",
            "expires_at",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "user" in self.fields:  # clients only: an operator's powers never ride on a key
            self.fields["user"].queryset = get_user_model().objects.filter(
                is_staff=False, is_superuser=False
            )


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    form = ApiKeyForm
    list_display = [
        "display",
        "user",
        "name",
        "environment",
        "key_state",
        "created_at",
        "last_used_at",
        "expires_at",
        "budget",
        "rate_per_minute",
        "max_in_flight",
    ]
    list_filter = ["environment", "can_manage_keys", "legacy", "created_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "name", "prefix", "last_four"]
    readonly_fields = [
        "display",
        "environment",
        "legacy",
        "created_at",
        "created_by",
        "last_used_at",
        "revoked_at",
        "period_start",
        "period_spent",
        "in_flight",
    ]
    actions = ["revoke_keys"]

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return []
        return ["user", *self.readonly_fields]

    def get_fields(self, request, obj=None):
        fields = list(ApiKeyForm.Meta.fields)
        return fields if obj is None else [*fields, *self.readonly_fields]

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: the ledger's holds name their key

    @admin.display(description="state")
    def key_state(self, obj: ApiKey) -> str:
        return obj.state(now())

    def save_model(self, request, obj, form, change):
        if change:
            super().save_model(request, obj, form, change)
            return
        created = key_issue(key=obj, created_by=f"admin: {request.user.get_username()}")
        request._svc_new_key_secret = created.secret

    def response_add(self, request, obj, post_url_continue=None):
        secret = getattr(request, "_svc_new_key_secret", None)
        if secret is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "API key created",
            "key": obj,
            "secret": secret,
            "opts": self.model._meta,
        }
        response = TemplateResponse(request, "admin/api/apikey/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke the selected keys", permissions=["change"])
    def revoke_keys(self, request, queryset):
        revoked = sum(_revoke_audited(request, key) for key in queryset)
        self.message_user(request, f"Revoked {revoked} key(s).", messages.SUCCESS)


def _revoke_audited(request, key: ApiKey) -> bool:
    """Revoke, and record who did in the audit trail (api/admin/audit.py), together."""
    with transaction.atomic():
        revoked = key_revoke(key=key, by=f"admin: {request.user.get_username()}")
        if revoked:
            changes = {"revoked_at": [None, key.revoked_at]}
            action_logged(request, key, changes=changes, action="revoke_keys")
    return revoked

"""Admin for client credits: accounts (read-only balances, a grant action, audited), ledger,
usage."""

from django import forms
from django.contrib import admin, messages
from django.db import transaction
from django.db.models import Count, Sum
from django.template.response import TemplateResponse

from api.admin.audit import action_logged
from api.models import Account, LedgerEntry, UsageRecord
from api.services.accounts import account_grant
from infra.admin_pages import ReadOnlyAdmin


class GrantForm(forms.Form):
    amount = forms.IntegerField(min_value=1, max_value=10**12, help_text="credits to add")
    note = forms.CharField(max_length=200, required=False)


@admin.register(Account)
class AccountAdmin(ReadOnlyAdmin):
    list_display = ["user", "balance", "held", "updated_at"]
    list_select_related = ["user"]
    search_fields = ["user__username"]
    fields = ["user", "balance", "held", "created_at", "updated_at"]
    readonly_fields = fields
    actions = ["grant_credits"]

    def has_change_permission(self, request, obj=None):
        # Viewing needs "change" in the admin; edits are still impossible (all fields read-only).
        return request.user.has_perm("api.change_account")

    @admin.action(description="Grant credits to the selected accounts…", permissions=["change"])
    def grant_credits(self, request, queryset):
        form = GrantForm(request.POST if "apply" in request.POST else None)
        if form.is_valid():
            amount, note = form.cleaned_data["amount"], form.cleaned_data["note"]
            note = note or f"granted by {request.user.get_username()} in the admin"
            for account in queryset.select_related("user"):
                _grant_audited(request, account, amount=amount, note=note)
            self.message_user(
                request,
                f"Granted {amount} credits to {queryset.count()} account(s).",
                messages.SUCCESS,
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": "Grant credits",
            "form": form,
            "accounts": queryset.select_related("user"),
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/api/account/grant_credits.html", context)


def _grant_audited(request, account: Account, *, amount: int, note: str) -> None:
    """The grant and its audit entry (the balance before and after) commit together."""
    with transaction.atomic():
        account.refresh_from_db(fields=["balance"])  # not as listed: holds move it meanwhile
        before = account.balance
        entry = account_grant(user=account.user, amount=amount, note=note)
        account.refresh_from_db(fields=["balance"])
        action_logged(
            request,
            account,
            changes={"balance": [before, account.balance]},
            action="grant_credits",
            amount=amount,
            note=note,
            ledger_entry=entry.request_id,
        )


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "user", "kind", "amount", "request_id", "note"]
    list_filter = ["kind", "created_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "request_id"]
    date_hierarchy = "created_at"


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "user",
        "service",
        "action",
        "resource",
        "status",
        "calls",
        "credits",
        "price",
    ]
    list_filter = ["resource", "status", "service", "created_at"]
    list_select_related = ["user"]
    search_fields = ["user__username", "request_id", "handler"]
    date_hierarchy = "created_at"

    def changelist_view(self, request, extra_context=None):
        """Totals of what is filtered, per resource and per client, above the list."""
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            rows = changelist.queryset
            response.context_data["usage_by_resource"] = _totals(rows, "resource")
            response.context_data["usage_by_client"] = _totals(rows, "user__username")
        return response


def _totals(rows, field: str) -> list[dict]:
    return list(
        rows.order_by()
        .values(field)
        .annotate(requests=Count("id"), credits=Sum("credits"), price=Sum("price"))
        .order_by(field)
    )

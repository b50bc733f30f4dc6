"""Admin for operators: handlers (ids from the code's registry), offers and client accounts."""

import json

from django import forms
from django.contrib import admin
from django.db.models import Count
from django.utils.html import format_html, format_html_join

from api.models import ServiceHandler, ServiceOffer, fallbacks_without_rows
from api.prompt_templates import TemplateError
from executor.handlers import all_handlers

admin.site.site_header = "Service marketplace"
admin.site.site_title = "Service marketplace admin"
admin.site.index_title = "Catalog and clients"


def handler_choices() -> list[tuple[str, str]]:
    """Handlers registered in executor/handlers/, as "id — first line of its docstring"."""
    choices = [
        (h.id, f"{h.id} — {h.description}" if h.description else h.id)
        for h in all_handlers().values()
    ]
    return [("", "---------"), *choices]


class ServiceHandlerForm(forms.ModelForm):
    # Choices are read on each form, so a handler added to the code shows up without a restart
    # of anything but the process that imports it.
    id = forms.ChoiceField(
        choices=handler_choices,
        label="Handler",
        help_text="A handler registered in executor/handlers/",
    )

    class Meta:
        model = ServiceHandler
        fields = ["id", "credits", "description"]


@admin.register(ServiceHandler)
class ServiceHandlerAdmin(admin.ModelAdmin):
    form = ServiceHandlerForm
    list_display = ["id", "credits", "is_registered", "offer_count", "description"]
    search_fields = ["id", "description"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(offer_count=Count("offers"))

    def get_readonly_fields(self, request, obj=None):
        # The id is the primary key: changing it would save a second handler, not rename one.
        return ["id"] if obj else []

    @admin.display(boolean=True, description="registered in code")
    def is_registered(self, obj: ServiceHandler) -> bool:
        return obj.id in all_handlers()

    @admin.display(description="offers", ordering="offer_count")
    def offer_count(self, obj: ServiceHandler) -> int:
        return obj.offer_count


class ServiceOfferForm(forms.ModelForm):
    class Meta:
        model = ServiceOffer
        fields = [
            "service",
            "action",
            "handler",
            "prompt_template",
            "params",
            "price",
            "create_qty",
            "expiration",
            "description",
            "is_active",
            "max_retries",
            "fallbacks",
            "credentials",
            "model_name",
            "price_per_1k_input",
            "price_per_1k_output",
        ]
        widgets = {
            "prompt_template": forms.Textarea(attrs={"rows": 4}),
            "params": forms.Textarea(attrs={"rows": 4}),
            "fallbacks": forms.Textarea(attrs={"rows": 3}),
        }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for name in ("price_per_1k_input", "price_per_1k_output"):
            if name in self.fields:  # an empty box: not metered
                self.fields[name].required = False

    def clean_price_per_1k_input(self):
        return self.cleaned_data.get("price_per_1k_input") or 0

    def clean_price_per_1k_output(self):
        return self.cleaned_data.get("price_per_1k_output") or 0

    def clean_fallbacks(self):
        fallbacks = self.cleaned_data.get("fallbacks")
        if fallbacks is None:  # an empty box: no fallbacks
            return []
        if not isinstance(fallbacks, list):
            raise forms.ValidationError('fallbacks must be a JSON list, e.g. ["http.post"]')
        rows = set(ServiceHandler.objects.values_list("id", flat=True))
        missing = [h for h in fallbacks_without_rows(fallbacks, rows) if h in all_handlers()]
        if missing:
            raise forms.ValidationError(
                f"add a service handler for {', '.join(missing)} first (its credits)"
            )
        return fallbacks

    def clean_params(self):
        params = self.cleaned_data.get("params")
        if params is None:  # an empty box: no params
            return {}
        if not isinstance(params, dict):
            raise forms.ValidationError('params must be a JSON object, e.g. {"model": "gpt-4o"}')
        return params

    def clean(self):
        cleaned = super().clean()
        service, action = cleaned.get("service"), cleaned.get("action")
        clash = ServiceOffer.objects.filter(service=service, action=action)
        if service and action and clash.exclude(pk=self.instance.pk).exists():
            # On `action`, which hides the model's generic "…already exists" non-field error.
            self.add_error(
                "action",
                f"an offer at /svc/{service}/{action}/ already exists; "
                "edit that one or pick another action",
            )
        return cleaned


@admin.register(ServiceOffer)
class ServiceOfferAdmin(admin.ModelAdmin):
    form = ServiceOfferForm
    list_display = [
        "endpoint_url",
        "handler",
        "price",
        "model_name",
        "create_qty",
        "expiration",
        "is_active",
    ]
    list_filter = ["service", "handler", "is_active"]
    list_select_related = ["handler"]
    search_fields = ["service", "action", "prompt_template", "description"]

    def get_fieldsets(self, request, obj=None):
        saved = bool(obj)  # the endpoint and inputs are shown once the offer exists
        return [
            (
                None,
                {
                    "fields": [
                        ("service", "action"),
                        *(["endpoint_url"] if saved else []),
                        "handler",
                        "prompt_template",
                        *(["required_inputs"] if saved else []),
                        "params",
                    ]
                },
            ),
            ("Pricing and results", {"fields": ["price", "create_qty", "expiration"]}),
            (
                "Resilience: retries, fallbacks, credentials",
                {"fields": ["max_retries", "fallbacks", "credentials"]},
            ),
            (
                "OpenAI-compatible gateway (/v1/): model and per-token prices",
                {"fields": ["model_name", ("price_per_1k_input", "price_per_1k_output")]},
            ),
            (None, {"fields": ["description", "is_active"]}),
        ]

    def get_readonly_fields(self, request, obj=None):
        return ["endpoint_url", "required_inputs"] if obj else []

    @admin.display(description="endpoint URL", ordering="service")
    def endpoint_url(self, obj: ServiceOffer) -> str:
        return format_html("<code>{}</code>", obj.endpoint)

    @admin.display(description="required inputs")
    def required_inputs(self, obj: ServiceOffer) -> str:
        try:
            inputs = obj.inputs
        except TemplateError as exc:  # saved before a rule tightened: say so, don't crash
            return f"the template is invalid: {exc}"
        if not inputs:
            return format_html("none; POST <code>{}</code>", "{}")
        names = format_html_join(", ", "<code>{}</code>", ((name,) for name in inputs))
        example = json.dumps(dict.fromkeys(inputs, "…"), ensure_ascii=False)
        return format_html("{}<br>example body: <code>{}</code>", names, example)

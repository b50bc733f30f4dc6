"""Admin for deals: their offers and add-ons inline and in order, checked together by
deal_rules.structure_problems, with the endpoint, the required inputs and a price preview
that follows the operator's edits (api/static/api/deal_price_preview.js)."""

import json

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Prefetch
from django.forms.models import BaseInlineFormSet
from django.utils.html import format_html, format_html_join

from api import deal_rules
from api.models import ServiceDeal, ServiceDealAddon, ServiceDealItem, ServiceOffer
from api.prompt_templates import TemplateError

# The inline formsets' prefixes: Django's default, the related_name of each row's `deal`.
ITEMS_PREFIX, ADDONS_PREFIX = "items", "addon_items"


def rows_in_order(inline_forms) -> list[forms.ModelForm]:
    """The validated rows that will be kept (an offer chosen, not deleted), in the order the
    operator means: by position, a row whose position is empty or 0 staying right after the
    row above it, so nobody has to number rows and a row added at the bottom ends up last."""
    kept = [
        form
        for form in inline_forms
        if form.cleaned_data.get("offer") and not form.cleaned_data.get("DELETE")
    ]
    keyed, position = [], 0
    for index, form in enumerate(kept):
        position = form.cleaned_data.get("position") or position
        keyed.append(((position, index), form))
    return [form for _key, form in sorted(keyed, key=lambda pair: pair[0])]


class PositionForm(forms.ModelForm):
    position = forms.IntegerField(
        required=False,
        min_value=0,
        widget=forms.NumberInput(attrs={"class": "svc-position"}),  # api/static/api/admin.css
        help_text="Empty or 0: right after the row above. Rows are renumbered 1, 2, … on save",
    )


class NumberedFormSet(BaseInlineFormSet):
    """Saves its rows with positions 1, 2, … in rows_in_order."""

    def clean(self):
        super().clean()
        if any(self.errors):
            return
        self.rows = rows_in_order(self.forms)
        for position, form in enumerate(self.rows, start=1):
            form.instance.position = position

    def save(self, commit=True):
        saved = super().save(commit)
        if commit:
            # Django saves only the rows whose form changed; renumbering may move the others.
            self.model.objects.bulk_update([form.instance for form in self.rows], ["position"])
        return saved


class ItemFormSet(NumberedFormSet):
    """The deal's offers; its clean() checks them together with the add-ons, so a deal that
    deal_rules would refuse is never saved, not even in part."""

    # The sibling add-on formset (None without permission to see it), set by
    # ServiceDealAdmin._create_formsets. Deliberately no default: unlinked, clean() fails loudly.
    addon_formset: NumberedFormSet | None

    def clean(self):
        super().clean()
        addon_forms = self.addon_formset.forms if self.addon_formset else []
        # Each row's own errors first: the structure of a half-valid deal means little. An
        # add-on row with errors (not deleted) keeps its own formset, and so the deal, unsaved.
        addon_errors = any(f.errors and not f.cleaned_data.get("DELETE") for f in addon_forms)
        if any(self.errors) or addon_errors:
            return
        # The items inline comes first, so the add-on rows are read before their formset's
        # clean(), which drops a duplicate's offer: deal_rules can still name the duplicate.
        items = [form.instance.step() for form in self.rows]
        addons = [form.instance.step() for form in rows_in_order(addon_forms)]
        problems = deal_rules.structure_problems(items, addons)
        if problems:
            raise ValidationError(problems)


class ServiceDealItemInline(admin.TabularInline):
    model = ServiceDealItem
    form = PositionForm
    formset = ItemFormSet
    fields = ["offer", "pipeline", "position"]
    extra = 1


class ServiceDealAddonInline(admin.TabularInline):
    model = ServiceDealAddon
    form = PositionForm
    formset = NumberedFormSet
    fields = ["offer", "position"]
    extra = 1


@admin.register(ServiceDeal)
class ServiceDealAdmin(admin.ModelAdmin):
    list_display = ["name", "endpoint_url", "offer_summary", "price_summary", "is_active"]
    list_filter = ["is_active"]
    search_fields = ["name", "description"]
    inlines = [ServiceDealItemInline, ServiceDealAddonInline]

    class Media:
        js = ["api/deal_price_preview.js"]
        css = {"all": ["api/admin.css"]}

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .prefetch_related(
                Prefetch("items", ServiceDealItem.objects.select_related("offer")),
                Prefetch("addon_items", ServiceDealAddon.objects.select_related("offer")),
            )
        )

    def get_fieldsets(self, request, obj=None):
        saved = bool(obj)  # the endpoint and inputs are shown once the deal exists
        return [
            (
                None,
                {
                    "fields": [
                        "name",
                        *(["endpoint_url", "required_inputs"] if saved else []),
                        "description",
                        "is_active",
                    ]
                },
            ),
            ("Price", {"fields": ["price", "price_modifier", "addons_modifier", "price_preview"]}),
        ]

    def get_readonly_fields(self, request, obj=None):
        return ["endpoint_url", "required_inputs", "price_preview"] if obj else ["price_preview"]

    def _create_formsets(self, request, obj, change):
        # Django validates each inline formset on its own, but whether a deal is usable
        # depends on its offers and add-ons together: the items formset checks both.
        formsets, inline_instances = super()._create_formsets(request, obj, change)
        by_model = {formset.model: formset for formset in formsets}
        if ServiceDealItem in by_model:
            by_model[ServiceDealItem].addon_formset = by_model.get(ServiceDealAddon)
        return formsets, inline_instances

    @admin.display(description="endpoint URL", ordering="name")
    def endpoint_url(self, obj: ServiceDeal) -> str:
        return format_html("<code>{}</code>", obj.endpoint)

    @admin.display(description="offers")
    def offer_summary(self, obj: ServiceDeal) -> str:
        items = ", ".join(str(item) for item in obj.items.all()) or "none"
        addons = ", ".join(str(addon) for addon in obj.addon_items.all())
        return f"{items}; add-ons: {addons}" if addons else items

    @admin.display(description="price")
    def price_summary(self, obj: ServiceDeal) -> str:
        base = f"fixed {obj.price}" if obj.price is not None else f"-{obj.price_modifier}%"
        return f"{base}; add-ons -{obj.addons_modifier}%" if obj.addons_modifier else base

    @admin.display(description="required inputs")
    def required_inputs(self, obj: ServiceDeal) -> str:
        items, addons = obj.ordered_items(), obj.ordered_addons()
        steps, addon_steps = [item.step() for item in items], [a.step() for a in addons]
        try:
            inputs = deal_rules.deal_inputs(steps)
            # The intake also asks for the inputs of the add-ons a client selects.
            addon_extras = [
                (str(addon), [name for name in deal_rules.step_inputs(step) if name not in inputs])
                for addon, step in zip(addons, addon_steps, strict=True)
            ]
            all_inputs = deal_rules.deal_inputs([*steps, *addon_steps])
        except TemplateError:  # saved before a rule tightened: say which offer, don't crash
            return f"unknown: {'; '.join(deal_rules.structure_problems(steps, addon_steps))}"
        names = format_html_join(", ", "<code>{}</code>", ((name,) for name in inputs))
        extras = format_html_join(
            "",
            "<br>with add-on {}, also {}",
            (
                (label, format_html_join(", ", "<code>{}</code>", ((n,) for n in extra)))
                for label, extra in addon_extras
                if extra
            ),
        )
        selectable = [str(addon) for addon in addons if addon.offer.is_active]
        body = {"inputs": dict.fromkeys(all_inputs, "…"), "addons": selectable}
        example = json.dumps(body, ensure_ascii=False)
        return format_html(
            "{}{}<br>example body: <code>{}</code>", names or "none", extras, example
        )

    @admin.display(description="price preview")
    def price_preview(self, obj: ServiceDeal) -> str:
        saved = obj.pk is not None  # the add page shows an empty table for the script to fill
        items = [item.offer for item in obj.ordered_items()] if saved else []
        addons = [addon.offer for addon in obj.ordered_addons()] if saved else []
        prices = dict(ServiceOffer.objects.values_list("pk", "price"))
        return format_html(
            '<table class="deal-price-preview" data-offer-prices="{}" data-items-prefix="{}" '
            'data-addons-prefix="{}"><thead><tr><th></th><th>list price</th><th>deal price</th>'
            "</tr></thead><tbody>{}</tbody></table>",
            json.dumps(prices),
            ITEMS_PREFIX,
            ADDONS_PREFIX,
            format_html_join(
                "", "<tr><td>{}</td><td>{}</td><td>{}</td></tr>", price_rows(obj, items, addons)
            ),
        )


def price_rows(deal: ServiceDeal, items: list, addons: list) -> list[tuple[str, int, int]]:
    """(what, list price, deal price): the offers alone, each add-on on its own (what it adds
    to the offers' price), and the total with every add-on when there are any. The script
    builds the same rows in the browser."""
    base = deal.price_for(items, [])
    rows = [("the offers", sum(offer.price for offer in items), base)]
    for addon in addons:
        rows.append((f"add-on {addon}", addon.price, deal.price_for(items, [addon]) - base))
    if addons:
        total = sum(offer.price for offer in [*items, *addons])
        rows.append(("with all add-ons", total, deal.price_for(items, addons)))
    return rows

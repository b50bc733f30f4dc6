"""The catalog as code (API.md, "Catalog file"): `catalog_import`, `catalog_export` and the
handlers and offers sections; the YAML file format is in `catalog_yaml`, deals in `catalog_deals`.

Import is all or nothing: every problem in the file is reported with its line and item, and
nothing changes unless there are none. An item sets every field of its row (an omitted
optional field takes the model's default), and a deal's offers and add-ons become exactly
the file's lists, so importing a file gives the same rows whatever was there before; rows
that the file does not mention are left alone. Items are checked with the models' own
validators (`full_clean`) and deals with `deal_rules`, the same rules as in the admin.
"""

from django.db import transaction

from api.models import ServiceDeal, ServiceHandler, ServiceOffer
from api.services.catalog_deals import _export_deal, _offer_templates, _plan_deals
from api.services.catalog_items import (
    SECTIONS,
    ImportReport,
    Problem,
    _check_fallback_rows,
    _export_row,
    _Item,
    _items,
    _plan,
    _Planned,
    _refuse_duplicate,
    _typed_fields,
)
from api.services.catalog_yaml import CatalogFileError, _line, catalog_dump_yaml, catalog_load_yaml
from executor.handlers import all_handlers

__all__ = [
    "CatalogFileError",
    "ImportReport",
    "Problem",
    "catalog_dump_yaml",
    "catalog_export",
    "catalog_import",
    "catalog_load_yaml",
]

# Field name → (expected YAML type, required). Export writes these fields in this order.
HANDLER_FIELDS = {
    "id": ("string", True),
    "credits": ("integer", False),
    "description": ("string", False),
}
OFFER_FIELDS = {
    "service": ("string", True),
    "action": ("string", True),
    "price": ("integer", True),
    "prompt_template": ("string", True),
    "handler": ("string", True),
    "create_qty": ("integer", False),
    "expiration": ("integer or null", False),
    "params": ("mapping", False),
    "description": ("string", False),
    "is_active": ("boolean", False),
    "max_retries": ("integer or null", False),
    "fallbacks": ("list", False),
    "credentials": ("string", False),
    "model_name": ("string", False),
    "price_per_1k_input": ("integer", False),
    "price_per_1k_output": ("integer", False),
}
# Offer fields exported only when set, so catalogs written before they existed export as before.
OFFER_FIELDS_IF_SET = (
    "max_retries",
    "fallbacks",
    "credentials",
    "model_name",
    "price_per_1k_input",
    "price_per_1k_output",
)


# --- export ---------------------------------------------------------------------------------


def catalog_export() -> dict:
    """The whole catalog in the import format; importing it gives back the same rows."""
    deals = ServiceDeal.objects.order_by("name").prefetch_related(
        "items__offer", "addon_items__offer"
    )
    return {
        "handlers": [_export_row(h, HANDLER_FIELDS) for h in ServiceHandler.objects.order_by("id")],
        "offers": [
            _export_row(o, OFFER_FIELDS, if_set=OFFER_FIELDS_IF_SET)
            for o in ServiceOffer.objects.order_by("service", "action")
        ],
        "deals": [_export_deal(deal) for deal in deals],
    }


# --- import ---------------------------------------------------------------------------------


def catalog_import(*, data: dict) -> ImportReport:
    """Validate the whole catalog, then upsert it in one transaction; nothing on any problem."""
    report = ImportReport()
    with transaction.atomic():
        sections = _sections(data, report)
        file_handler_ids = {
            item.get("id")
            for item in sections["handlers"]
            if isinstance(item, dict) and isinstance(item.get("id"), str)
        }
        plans = {  # in saving order: offers need their handlers, deals their offers
            "handlers": _plan_handlers(sections["handlers"], report),
            "offers": _plan_offers(sections["offers"], file_handler_ids, report),
            "deals": _plan_deals(sections["deals"], _offer_templates(sections["offers"]), report),
        }
        if report.problems:
            report.problems.sort(key=lambda problem: problem.line or 0)  # stable: file order
            return report
        for section, planned in plans.items():
            for plan in planned:
                if plan.status != "unchanged":
                    plan.save()
                report.counts[section, plan.status] += 1
    return report


def _sections(data, report: ImportReport) -> dict[str, list]:
    def problem(message: str, key=None) -> None:
        report.problems.append(Problem("", message, _line(data, key)))

    if not isinstance(data, dict):
        problem("the catalog must be a mapping with handlers:, offers: and deals: lists")
        return {name: [] for name in SECTIONS}
    for key in data:
        if key not in SECTIONS:
            problem(f"unknown key {key!r} (expected: {', '.join(SECTIONS)})", key)
    sections = {}
    for name in SECTIONS:
        value = data.get(name)
        if value is not None and not isinstance(value, list):
            problem(f"{name}: must be a list", name)
        sections[name] = value if isinstance(value, list) else []
    return sections


def _plan_handlers(items: list, report: ImportReport) -> list[_Planned]:
    planned, seen = [], {}
    for item in _items("handlers", items, report):
        checked = _typed_fields(item, HANDLER_FIELDS, ServiceHandler)
        if checked is None:
            continue
        values, bad = checked
        if "id" in values and _refuse_duplicate(item, values["id"], seen):
            continue
        lookup = {"id": values["id"]} if "id" in values else None
        planned.append(_plan(item, ServiceHandler, lookup, values, bad))
    return planned


def _plan_offers(items: list, file_handler_ids: set, report: ImportReport) -> list[_Planned]:
    planned, seen, models = [], {}, {}
    db_handler_ids = set(ServiceHandler.objects.values_list("id", flat=True))
    for item in _items("offers", items, report):
        checked = _typed_fields(item, OFFER_FIELDS, ServiceOffer)
        if checked is None:
            continue
        values, bad = checked
        lookup = None
        if "service" in values and "action" in values:
            lookup = {"service": values["service"], "action": values["action"]}
            if _refuse_duplicate(item, (values["service"], values["action"]), seen):
                continue
        if values.get("model_name"):
            name = values["model_name"]
            if name in models:
                item.problem(
                    f"model_name {name!r} is also {models[name]}'s; a model names one offer",
                    "model_name",
                )
            models.setdefault(name, item.where)
        if "handler" in values:
            _check_handler_ref(item, values["handler"], file_handler_ids | db_handler_ids)
        _check_fallback_rows(item, values.get("fallbacks"), file_handler_ids | db_handler_ids)
        # The handler may exist only in this file so far: checked above, not by the model.
        planned.append(_plan(item, ServiceOffer, lookup, values, bad | {"handler"}))
    return planned


def _check_handler_ref(item: _Item, handler_id: str, defined: set) -> None:
    registered = all_handlers()
    if handler_id not in registered:
        item.problem(
            f"handler {handler_id!r} is not registered "
            f"(registered: {', '.join(registered) or 'none'})",
            "handler",
        )
    elif handler_id not in defined:
        item.problem(
            f"handler {handler_id!r} is neither under handlers: in this file nor in "
            "the database; add it under handlers:",
            "handler",
        )

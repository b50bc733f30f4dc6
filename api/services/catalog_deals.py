"""The deals section of the catalog: the deal fields, exporting a deal with its offers and
add-ons, and planning a deal on import, with its offer references checked and the structure
rules of `deal_rules` applied.
"""

from dataclasses import dataclass, field

from django.db.models import Q

from api.deal_rules import PIPELINE_MODES, Step, structure_problems
from api.models import ServiceDeal, ServiceDealAddon, ServiceDealItem, ServiceOffer
from api.prompt_templates import TemplateError, template_fields
from api.services.catalog_items import (
    ImportReport,
    _entry_line,
    _Item,
    _items,
    _plan,
    _Planned,
    _refuse_duplicate,
    _typed_fields,
)
from api.services.catalog_yaml import _line

# Field name → (expected YAML type, required). Export writes these fields in this order.
DEAL_FIELDS = {
    "name": ("string", True),
    "offers": ("list", True),
    "price": ("integer or null", False),
    "price_modifier": ("integer", False),
    "addons": ("list", False),
    "addons_modifier": ("integer", False),
    "description": ("string", False),
    "is_active": ("boolean", False),
}
# Deal fields kept as rows of their own (ServiceDealItem, ServiceDealAddon), not on the deal.
DEAL_LINKS = ("offers", "addons")
# Keys of one entry of a deal's offers: list; a plain "service/action" string means
# {offer: "service/action", pipeline: null}.
DEAL_ITEM_KEYS = ("offer", "pipeline")


def _export_deal(deal: ServiceDeal) -> dict:
    links = {
        # Always the long form with pipeline written out, so a diff shows a mode change.
        "offers": [
            {"offer": str(item.offer), "pipeline": item.pipeline or None}
            for item in deal.items.all()  # prefetched in Meta.ordering: position, id
        ],
        "addons": [str(addon.offer) for addon in deal.addon_items.all()],
    }
    return {name: links[name] if name in links else getattr(deal, name) for name in DEAL_FIELDS}


@dataclass
class _PlannedDeal(_Planned):
    items: list[tuple[str, str]] = field(default_factory=list)  # ("service/action", pipeline)
    addons: list[str] = field(default_factory=list)  # "service/action"

    def save(self) -> None:
        """Save the deal and make its offers and add-ons exactly the planned lists. The
        offers are saved by now; requests keep their own snapshot, so no row refers to the
        old items."""
        deal = self.instance
        deal.save()
        deal.items.all().delete()
        deal.addon_items.all().delete()
        offers = _offers_by_label({label for label, _ in self.items} | set(self.addons))
        ServiceDealItem.objects.bulk_create(
            ServiceDealItem(deal=deal, offer=offers[label], position=position, pipeline=mode)
            for position, (label, mode) in enumerate(self.items)
        )
        ServiceDealAddon.objects.bulk_create(
            ServiceDealAddon(deal=deal, offer=offers[label], position=position)
            for position, label in enumerate(self.addons)
        )


def _offer_templates(offer_items: list) -> dict[str, str]:
    """The prompt template of every offer a deal may name, by "service/action": the
    database's, replaced by this file's. A template the offer's own check refuses counts as
    "" here, so its problem is reported once, under offers:."""
    rows = ServiceOffer.objects.values_list("service", "action", "prompt_template")
    templates = {f"{service}/{action}": template for service, action, template in rows}
    in_file = {}
    for data in offer_items:
        if not isinstance(data, dict):
            continue
        service, action, template = (data.get(k) for k in ("service", "action", "prompt_template"))
        if isinstance(service, str) and isinstance(action, str):
            in_file.setdefault(f"{service}/{action}", template if _usable(template) else "")
    return templates | in_file


def _usable(template) -> bool:
    if not isinstance(template, str):
        return False
    try:
        template_fields(template)
    except TemplateError:
        return False
    return True


def _plan_deals(items: list, templates: dict[str, str], report: ImportReport) -> list[_Planned]:
    planned, seen = [], {}
    for item in _items("deals", items, report):
        checked = _typed_fields(item, DEAL_FIELDS, ServiceDeal)
        if checked is None:
            continue
        values, bad = checked
        if "name" in values and _refuse_duplicate(item, values["name"], seen):
            continue
        deal_items, addons = _deal_links(item, values, bad, templates)
        fields = {name: value for name, value in values.items() if name not in DEAL_LINKS}
        lookup = {"name": values["name"]} if "name" in values else None
        plan = _plan(item, ServiceDeal, lookup, fields, bad)
        status = plan.status
        if status == "unchanged" and _links_differ(plan.instance, deal_items, addons):
            status = "updated"
        planned.append(_PlannedDeal(plan.instance, status, deal_items, addons))
    return planned


def _deal_links(
    item: _Item, values: dict, bad: set, templates: dict[str, str]
) -> tuple[list[tuple[str, str]], list[str]]:
    """The deal's items ("service/action", pipeline "" for none) and add-ons, with problems
    reported for malformed entries, unknown offers and the structure rules (deal_rules)."""
    entries, addon_entries = values.get("offers", []), values.get("addons", [])
    items = [_deal_item(item, entries, index, templates) for index in range(len(entries))]
    addons = [
        _offer_ref(item, ref, f"add-on {index + 1}", templates, _entry_line(addon_entries, index))
        for index, ref in enumerate(addon_entries)
    ]
    # Structure rules need every entry readable; otherwise they would only repeat problems.
    if not bad & set(DEAL_LINKS) and None not in items and None not in addons:
        steps = [Step(label, templates.get(label, ""), mode or None) for label, mode in items]
        addon_steps = [Step(label, templates.get(label, "")) for label in addons]
        for message in structure_problems(steps, addon_steps):
            item.problem(message)
    return [i for i in items if i is not None], [a for a in addons if a is not None]


def _deal_item(item: _Item, entries: list, index: int, templates: dict) -> tuple[str, str] | None:
    """One entry of a deal's offers: ("service/action", pipeline), or None if unusable."""
    entry, line, where = entries[index], _entry_line(entries, index), f"offer {index + 1}"
    if isinstance(entry, str):
        entry = {"offer": entry}  # the short form: not a pipeline step
    if not isinstance(entry, dict):
        item.problem(
            f"{where}: must be a mapping with the keys {', '.join(DEAL_ITEM_KEYS)}", line=line
        )
        return None
    for key in entry:
        if key not in DEAL_ITEM_KEYS:
            item.problem(
                f"{where}: unknown key {key!r} (known: {', '.join(DEAL_ITEM_KEYS)})",
                line=_line(entry, key) or line,
            )
    if "offer" not in entry:
        item.problem(f"{where}: missing required field 'offer'", line=line)
        return None
    mode = entry.get("pipeline")
    mode_ok = mode is None or mode in PIPELINE_MODES
    if not mode_ok:
        item.problem(
            f"{where}: pipeline must be one of {', '.join(PIPELINE_MODES)} or null, not {mode!r}",
            line=_line(entry, "pipeline") or line,
        )
    label = _offer_ref(item, entry["offer"], where, templates, _line(entry, "offer") or line)
    if label is None or not mode_ok:
        return None
    return label, mode or ""  # the model stores "not a pipeline step" as ""


def _offer_ref(item: _Item, ref, where: str, templates: dict, line: int | None) -> str | None:
    """`ref` if it has the form "service/action" (reported when no such offer exists),
    else None."""
    if not isinstance(ref, str) or ref.count("/") != 1 or "" in ref.split("/"):
        item.problem(f"{where}: must name an offer as 'service/action', not {ref!r}", line=line)
        return None
    if ref not in templates:
        item.problem(
            f"{where} ({ref}) is neither under offers: in this file nor in the database; "
            "add it under offers:",
            line=line,
        )
    return ref


def _links_differ(deal: ServiceDeal, items: list[tuple[str, str]], addons: list[str]) -> bool:
    stored_items = [(i.position, str(i.offer), i.pipeline) for i in deal.ordered_items()]
    stored_addons = [(a.position, str(a.offer)) for a in deal.ordered_addons()]
    planned_items = [(position, label, mode) for position, (label, mode) in enumerate(items)]
    return stored_items != planned_items or stored_addons != list(enumerate(addons))


def _offers_by_label(labels: set[str]) -> dict[str, ServiceOffer]:
    query = Q(pk__in=[])
    for label in labels:
        service, action = label.split("/")
        query |= Q(service=service, action=action)
    return {str(offer): offer for offer in ServiceOffer.objects.filter(query)}

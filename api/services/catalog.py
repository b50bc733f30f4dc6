"""The catalog as code (API.md, "Catalog file"): load YAML, validate every item, upsert.

Import is all or nothing: every problem in the file is reported with its line and item, and
nothing changes unless there are none. An item sets every field of its row (an omitted
optional field takes the model's default), and a deal's offers and add-ons become exactly
the file's lists, so importing a file gives the same rows whatever was there before; rows
that the file does not mention are left alone. Items are checked with the models' own
validators (`full_clean`) and deals with `deal_rules`, the same rules as in the admin.
"""

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

import yaml
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models, transaction
from django.db.models import Q

from api.deal_rules import PIPELINE_MODES, Step, structure_problems
from api.models import (
    ServiceDeal,
    ServiceDealAddon,
    ServiceDealItem,
    ServiceHandler,
    ServiceOffer,
)
from api.prompt_templates import TemplateError, template_fields
from executor.handlers import all_handlers

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
}
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
SECTIONS = ("handlers", "offers", "deals")

# YAML types are checked before the model sees a value: Django would quietly turn 3.5 into 3.
_TYPE_CHECKS = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "integer or null": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "mapping": lambda v: isinstance(v, dict),
    "list": lambda v: isinstance(v, list),
    "boolean": lambda v: isinstance(v, bool),
}


class CatalogFileError(ValueError):
    """The text is not a YAML document at all; the message is one line."""


@dataclass(frozen=True)
class Problem:
    where: str  # e.g. "offers[2] (text/greet)"; empty for the file as a whole
    message: str
    line: int | None = None

    def __str__(self) -> str:
        parts = [f"line {self.line}" if self.line else "", self.where, self.message]
        return ": ".join(part for part in parts if part)


@dataclass
class ImportReport:
    problems: list[Problem] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)  # (section, created|updated|unchanged)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return "; ".join(
            f"{section}: {self.counts[section, 'created']} created, "
            f"{self.counts[section, 'updated']} updated, "
            f"{self.counts[section, 'unchanged']} unchanged"
            for section in SECTIONS
        )


# --- YAML -----------------------------------------------------------------------------------


class _LineDict(dict):
    """A mapping read from YAML; `line` is where it starts, `key_lines` where each key is."""


class _LineList(list):
    """A sequence read from YAML; `line` is where it starts, `item_lines` where each item is."""


class _CatalogLoader(yaml.SafeLoader):
    pass


def _construct_mapping(loader: _CatalogLoader, node: yaml.MappingNode):
    data = _LineDict()
    data.line = node.start_mark.line + 1
    yield data
    _refuse_duplicate_keys(node)
    data.update(loader.construct_mapping(node))
    data.key_lines = {
        loader.construct_object(key): key.start_mark.line + 1
        for key, _value in node.value
        if isinstance(key, yaml.ScalarNode)
    }


def _refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    # PyYAML keeps the last of two equal keys silently; in a catalog that hides a mistake.
    seen = set()
    for key, _value in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        if (key.tag, key.value) in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key.value!r}", key.start_mark
            )
        seen.add((key.tag, key.value))


def _construct_sequence(loader: _CatalogLoader, node: yaml.SequenceNode):
    data = _LineList()
    data.line = node.start_mark.line + 1
    data.item_lines = [item.start_mark.line + 1 for item in node.value]
    yield data
    data.extend(loader.construct_sequence(node))


_CatalogLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_CatalogLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def catalog_load_yaml(text: str):
    """Parse a catalog file, keeping line numbers for the problems `catalog_import` reports."""
    try:
        return yaml.load(text, Loader=_CatalogLoader)  # a SafeLoader: plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = " ".join(str(exc.problem or exc.context or "unreadable").split())
        raise CatalogFileError(f"invalid YAML{where}: {reason}") from None
    except yaml.YAMLError as exc:
        raise CatalogFileError(f"invalid YAML: {' '.join(str(exc).split())}") from None


class _CatalogDumper(yaml.SafeDumper):
    def increase_indent(self, flow=False, indentless=False):
        # Indent list items under their key, as in API.md's example.
        return super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str):
    style = "|" if "\n" in value else None  # multi-line templates read best as blocks
    if any(char in value for char in "\r\x85\u2028\u2029"):
        style = '"'  # YAML folds these line breaks unless they are escaped
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_CatalogDumper.add_representer(str, _represent_str)


def catalog_dump_yaml(data: dict) -> str:
    return yaml.dump(
        data,
        Dumper=_CatalogDumper,
        sort_keys=False,
        allow_unicode=True,
        default_flow_style=False,
        width=4096,
    )


def _line(data, key=None) -> int | None:
    if key is not None and key in getattr(data, "key_lines", {}):
        return data.key_lines[key]
    return getattr(data, "line", None)


# --- export ---------------------------------------------------------------------------------


def catalog_export() -> dict:
    """The whole catalog in the import format; importing it gives back the same rows."""
    deals = ServiceDeal.objects.order_by("name").prefetch_related(
        "items__offer", "addon_items__offer"
    )
    return {
        "handlers": [_export_row(h, HANDLER_FIELDS) for h in ServiceHandler.objects.order_by("id")],
        "offers": [
            _export_row(o, OFFER_FIELDS) for o in ServiceOffer.objects.order_by("service", "action")
        ],
        "deals": [_export_deal(deal) for deal in deals],
    }


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


def _export_row(instance: models.Model, schema: dict) -> dict:
    return {name: getattr(instance, _attname(instance, name)) for name in schema}


def _attname(model, name: str) -> str:
    return model._meta.get_field(name).attname  # "handler" → "handler_id"


# --- import ---------------------------------------------------------------------------------


@dataclass
class _Item:
    """One item of a section, for reporting problems at its place in the file."""

    section: str
    index: int
    data: object
    line: int | None
    report: ImportReport

    @property
    def where(self) -> str:
        data = self.data if isinstance(self.data, dict) else {}
        keys = {"handlers": ("id",), "offers": ("service", "action"), "deals": ("name",)}
        values = [data.get(key) for key in keys[self.section]]
        label = "/".join(values) if all(isinstance(v, str) for v in values) else ""
        return f"{self.section}[{self.index}]" + (f" ({label})" if label else "")

    def problem(self, message: str, key=None, line: int | None = None) -> None:
        line = line or (_line(self.data, key) if key is not None else None)
        self.report.problems.append(Problem(self.where, message, line or self.line))


@dataclass
class _Planned:
    instance: models.Model
    status: str  # created | updated | unchanged

    def save(self) -> None:
        self.instance.save()


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


def _items(section: str, items: list, report: ImportReport):
    for index, data in enumerate(items):
        yield _Item(section, index, data, _entry_line(items, index), report)


def _entry_line(items: list, index: int) -> int | None:
    lines = getattr(items, "item_lines", [])
    return _line(items[index]) or (lines[index] if index < len(lines) else None)


def _typed_fields(item: _Item, schema: dict, model) -> tuple[dict, set] | None:
    """Values of the right type (defaults for omitted ones), and the names that are unusable."""
    if not isinstance(item.data, dict):
        item.problem(f"must be a mapping with the keys {', '.join(schema)}")
        return None
    for key in item.data:
        if key not in schema:
            item.problem(f"unknown key {key!r} (known: {', '.join(schema)})", key)
    values, bad = {}, set()
    for name, (kind, required) in schema.items():
        if name not in item.data:
            if required:
                item.problem(f"missing required field {name!r}")
                bad.add(name)
            elif kind == "list":
                values[name] = []
            else:
                values[name] = model._meta.get_field(name).get_default()
        elif _TYPE_CHECKS[kind](item.data[name]):
            values[name] = item.data[name]
        else:
            item.problem(f"{name}: must be {_a(kind)}, not {item.data[name]!r}", name)
            bad.add(name)
    return values, bad


def _a(kind: str) -> str:
    if kind == "boolean":
        return "true or false"
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def _plan(item: _Item, model, lookup: dict | None, values: dict, exclude: set) -> _Planned:
    """The row this item describes (existing or new), validated by the model's own rules."""
    instance = model.objects.filter(**lookup).first() if lookup else None
    status = "created" if instance is None else "updated"
    instance = instance or model()
    before = _export_row(instance, values)
    for name, value in values.items():
        setattr(instance, _attname(instance, name), value)
    try:
        instance.full_clean(exclude=sorted(exclude))
    except ValidationError as exc:
        _report_validation(item, exc)
    if status == "updated" and _export_row(instance, values) == before:
        status = "unchanged"
    return _Planned(instance, status)


def _report_validation(item: _Item, exc: ValidationError) -> None:
    for name, messages in exc.message_dict.items():
        for message in messages:
            if name == NON_FIELD_ERRORS:
                item.problem(message)
            else:
                item.problem(f"{name}: {message}", name)


def _refuse_duplicate(item: _Item, key: Hashable, seen: dict) -> bool:
    if key in seen:
        item.problem(f"duplicate of {seen[key]}; each {item.section[:-1]} may appear once")
        return True
    seen[key] = f"{item.where} (line {item.line})" if item.line else item.where
    return False


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
    planned, seen = [], {}
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
        if "handler" in values:
            _check_handler_ref(item, values["handler"], file_handler_ids | db_handler_ids)
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


# --- deals ----------------------------------------------------------------------------------


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

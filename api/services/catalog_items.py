"""The parts every catalog section shares: `Problem` and `ImportReport`, an item of a section
(`_Item`) that reports problems at its line, the YAML type checks of its fields, and the plan of
the row it describes, validated by the model's own rules.
"""

from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field

from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models

from api.models import fallbacks_without_rows
from api.services.catalog_yaml import _line
from executor.handlers import all_handlers

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


def _export_row(instance: models.Model, schema: dict, if_set: tuple = ()) -> dict:
    """The row's fields in schema order; those in `if_set` only when not their default
    (None, "" or an empty list), so fields added later leave older files unchanged."""
    row = {name: getattr(instance, _attname(instance, name)) for name in schema}
    return {
        name: value
        for name, value in row.items()
        if name not in if_set or value not in (None, "", [])  # 0 retries is a setting
    }


def _attname(model, name: str) -> str:
    return model._meta.get_field(name).attname  # "handler" → "handler_id"


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


def _check_fallback_rows(item: _Item, fallbacks, defined: set) -> None:
    """A fallback handler needs a handler row (its credits): in this file or the database."""
    for handler_id in fallbacks_without_rows(fallbacks, defined):
        if handler_id in all_handlers():  # an unregistered one is the model's to report
            item.problem(
                f"fallback handler {handler_id!r} is neither under handlers: in this file nor "
                "in the database; add it under handlers:",
                "fallbacks",
            )

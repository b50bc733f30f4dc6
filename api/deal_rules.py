"""What a deal is, independent of storage: its price, its inputs, its structure, and how a
pipeline step's output follows from the item before it (API.md, "Catalog file").

Used by the models (validation), the admin (previews), the catalog import and the intake, so
every place applies the same rules.
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass

from api.prompt_templates import TemplateError, template_fields

OVERWRITE, EXTEND, PASS_THROUGH = "overwrite", "extend", "pass_through"
PIPELINE_MODES = (OVERWRITE, EXTEND, PASS_THROUGH)
# The template variable through which a pipeline step receives the previous item's output.
PREVIOUS = "previous"
# What joins several results into the text of `{previous}`.
PREVIOUS_SEPARATOR = "\n\n"


def percent_off(amount: int, percent: int) -> int:
    """`amount` less `percent`%, rounded half up to an integer (exact integer arithmetic)."""
    return (amount * (100 - percent) * 2 + 100) // 200


def deal_price(
    *,
    fixed: int | None,
    price_modifier: int,
    item_prices: Sequence[int],
    addon_prices: Sequence[int],
    addons_modifier: int,
) -> int:
    """`fixed` if set, else the items' prices less `price_modifier`%; plus the selected
    add-ons' prices less `addons_modifier`%; each part rounded half up."""
    base = fixed if fixed is not None else percent_off(sum(item_prices), price_modifier)
    addons = percent_off(sum(addon_prices), addons_modifier) if addon_prices else 0
    return base + addons


@dataclass(frozen=True)
class Step:
    """One item of a deal as the rules see it: its offer's template and its pipeline mode."""

    label: str  # "service/action", for messages
    prompt_template: str
    pipeline: str | None = None


def step_inputs(step: Step) -> list[str]:
    """The deal inputs a step needs: its template's variables, less `previous` for a step."""
    names = template_fields(step.prompt_template)
    return [name for name in names if not (step.pipeline and name == PREVIOUS)]


def deal_inputs(steps: Sequence[Step]) -> list[str]:
    """The union of the steps' inputs, in order of first appearance."""
    names: list[str] = []
    for step in steps:
        for name in step_inputs(step):
            if name not in names:
                names.append(name)
    return names


def structure_problems(items: Sequence[Step], addons: Sequence[Step]) -> list[str]:
    """What makes this list of items and add-ons unusable as a deal; empty when it is fine."""
    problems = []
    if not items:
        problems.append("a deal needs at least one offer")
    elif items[0].pipeline:
        problems.append(
            f"the first offer ({items[0].label}) cannot be a pipeline step: "
            "there is no offer before it to follow"
        )
    for position, step in enumerate(items, start=1):
        if step.pipeline is not None and step.pipeline not in PIPELINE_MODES:
            problems.append(
                f"offer {position} ({step.label}): pipeline must be one of "
                f"{', '.join(PIPELINE_MODES)} or empty, not {step.pipeline!r}"
            )
    for kind, steps in (("offer", items), ("add-on", addons)):
        for position, step in enumerate(steps, start=1):
            try:
                names = template_fields(step.prompt_template)
            except TemplateError as exc:
                problems.append(f"{kind} {position} ({step.label}): {exc}")
                continue
            if PREVIOUS in names and not step.pipeline:
                problems.append(
                    f"{kind} {position} ({step.label}) uses {{{PREVIOUS}}}, which only a "
                    "pipeline step receives; make it a pipeline step or use another offer"
                )
    labels = [step.label for step in addons]
    for label in sorted({label for label in labels if labels.count(label) > 1}):
        problems.append(f"add-on {label} is listed twice")
    for label in sorted({step.label for step in items} & set(labels)):
        problems.append(f"{label} is both an offer and an add-on of the deal")
    return problems


def item_output(mode: str | None, previous: list | None, own: list) -> list:
    """What an item passes on (and shows as its part of the deal's results)."""
    if mode == EXTEND:
        return [*(previous or []), *own]
    if mode == PASS_THROUGH:
        return list(previous or [])
    return list(own)  # overwrite, or not a pipeline step


def previous_text(output: list) -> str:
    """`{previous}` for the next step: the results as text, joined by a blank line."""
    return PREVIOUS_SEPARATOR.join(
        value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
        for value in output
    )

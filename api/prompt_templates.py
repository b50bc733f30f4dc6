"""Prompt templates: Python `str.format` with plain field names only.

`{name}` is a required input; attribute or index access (`{x.__class__}`, `{x[0]}`),
positional fields, conversions and format specs are refused, so a template can never reach
into an object's internals.
"""

from string import Formatter


class TemplateError(ValueError):
    """The template cannot be used; the message says why, for an operator."""


def template_fields(template: str) -> list[str]:
    """The template's input names, in order of first appearance."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:
        raise TemplateError(f"bad template syntax: {exc}") from None
    fields: list[str] = []
    for _literal, name, spec, conversion in parsed:
        if name is None:
            continue
        if name == "" or name.isdigit():
            raise TemplateError("positional fields such as {} or {0} are not allowed; name them")
        if not name.isidentifier():
            raise TemplateError(
                f"{{{name}}} is not a plain field name: only {{name}} is allowed, "
                "no attribute or index access"
            )
        if conversion or spec:
            raise TemplateError(
                f"{{{name}}} uses a conversion or format spec; use plain {{{name}}}"
            )
        if name not in fields:
            fields.append(name)
    return fields


def render(template: str, inputs: dict) -> str:
    fields = template_fields(template)
    return template.format_map({name: _as_text(inputs[name]) for name in fields})


def _as_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)

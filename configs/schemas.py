"""What each config name the code knows must contain; other names are stored free-form.

validate(name, content) checks loaded content (prefixes kept, secrets in plaintext) and
returns every problem as "path: message"; [] means valid. Known names:

    api          intake_rate ("600/min", DRF's syntax), max_body_bytes (bytes)
    service_map  resource_map: the executor's resource map ({resources: {...}}, checked by
                 executor/resources.py itself); credentials: {<name>: {kind, ~secrets…}}
                 (executor/credentials.py); handlers: {<registered handler id>: settings}
"""

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from configs.protocol import path_text, split_key
from executor import resources

Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Field:
    check: Check
    required: bool = False
    secret: bool = False  # must be written `~name`, so that it is stored encrypted
    prefixable: bool = True  # False: structure the code walks, never a secret or bytes


def validate(name: str, content: dict) -> list[str]:
    check = KNOWN.get(name)
    return check(content) if check else []


# ---------------------------------------------------------------------------------------------
# Value checks: each returns why a value is wrong, or None


def _text(value) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _url(value) -> str | None:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts and parts.scheme in ("http", "https") and parts.netloc:
        return None
    return "must be an http(s) URL"


def _positive_int(value) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return None
    return "must be a positive integer"


# DRF's throttle rate: "<requests>/<period>", the period's first letter s, m, h or d.
_RATE = re.compile(r"[1-9][0-9]*/(s|m|h|d)[a-z]*")


def _rate(value) -> str | None:
    if isinstance(value, str) and _RATE.fullmatch(value.strip()):
        return None
    return 'must be a rate such as "600/min" (per s, min, hour or day)'


def _mapping(value) -> str | None:
    return None if isinstance(value, dict) else "must be a mapping"


def _seconds_below_job_timeout(value) -> str | None:
    from django.conf import settings

    number = isinstance(value, int | float) and not isinstance(value, bool)
    limit = settings.SVC_JOB_TIMEOUT
    if not number or not 0 < value < limit:
        return f"must be a number of seconds above 0 and below SVC_JOB_TIMEOUT ({limit})"
    return None


def _credential_name(value) -> str | None:
    from executor.credentials import NAME_PATTERN

    if isinstance(value, str) and re.fullmatch(NAME_PATTERN, value):
        return None
    return "must be a credential set name (letters, digits, . _ -)"


def check_fields(where: tuple, mapping: dict, fields: dict[str, Field]) -> list[str]:
    """Problems of `mapping` against `fields`: unknown, missing, badly prefixed or bad values."""
    problems, given = [], set()
    for key, value in mapping.items():
        name = split_key(key)[0]
        here = path_text((*where, key))
        if name not in fields:
            problems.append(f"{here}: unknown key (known: {', '.join(fields)})")
            continue
        given.add(name)
        problem = _field_problem(key, value, fields[name])
        if problem:
            problems.append(f"{here}: {problem}")
    missing = [name for name, field in fields.items() if field.required and name not in given]
    return problems + [f"{path_text((*where, name))}: required" for name in missing]


def _field_problem(key: str, value, field: Field) -> str | None:
    name, secret, as_bytes = split_key(key)
    if not field.prefixable and (secret or as_bytes):
        return f"takes no ~ or ^ prefix (write {name})"
    if field.secret and not secret:
        return f"a secret: write it as ~{name} so it is stored encrypted"
    if as_bytes:
        return "cannot be bytes here (drop the ^)"
    return field.check(value)


# ---------------------------------------------------------------------------------------------
# api

API_FIELDS = {"intake_rate": Field(_rate), "max_body_bytes": Field(_positive_int)}


def _check_api(content: dict) -> list[str]:
    return check_fields((), content, API_FIELDS)


# ---------------------------------------------------------------------------------------------
# service_map

SERVICE_MAP_FIELDS = {
    "resource_map": Field(_mapping, required=True, prefixable=False),
    "credentials": Field(_mapping, prefixable=False),
    "handlers": Field(_mapping, prefixable=False),
}
# Settings every registered handler takes: its default credential set (a name under
# `credentials:`) and the timeouts of one try (seconds; each below SVC_JOB_TIMEOUT).
COMMON_HANDLER_SETTINGS = {
    "credentials": Field(_credential_name, prefixable=False),
    "timeouts": Field(_mapping, prefixable=False),
}
TIMEOUT_FIELDS = {
    name: Field(_seconds_below_job_timeout, prefixable=False)
    for name in ("connect", "read", "total")
}
# Settings a handler takes from the service_map besides the common ones, by handler id; a
# new handler with settings adds its entry here.
HANDLER_SETTINGS = {
    "openai.chat": {
        "api_key": Field(_text, secret=True),  # the older inline form of a credential set
        "base_url": Field(_url),
        "model": Field(_text),
    },
}


def _check_service_map(content: dict) -> list[str]:
    problems = check_fields((), content, SERVICE_MAP_FIELDS)
    if problems:
        return problems
    problems += [f"resource_map: {p}" for p in _unprefixed(content["resource_map"])]
    problems += resource_map_problems(content["resource_map"])
    credentials = content.get("credentials") or {}
    problems += _credential_problems(credentials)
    return problems + _handler_problems(content.get("handlers") or {}, set(credentials))


def _credential_problems(sets: dict) -> list[str]:
    """Each set: a `kind` and exactly its fields, every secret one written `~name`."""
    from executor.credentials import KINDS, OPTIONS

    problems = []
    for name, entry in sets.items():
        here = ("credentials", name)
        if _credential_name(name):
            problems.append(f"{path_text(here)}: {_credential_name(name)}")
        elif not isinstance(entry, dict):
            problems.append(f"{path_text(here)}: must be a mapping with kind and its keys")
        elif entry.get("kind") not in KINDS:
            kinds = ", ".join(KINDS)
            problems.append(f"{path_text((*here, 'kind'))}: required, one of {kinds}")
        else:
            kind = entry["kind"]
            fields = {"kind": Field(lambda v: None, required=True, prefixable=False)}
            fields |= {key: Field(_text, required=True, secret=True) for key in KINDS[kind]}
            fields |= {key: Field(_text, prefixable=False) for key in OPTIONS.get(kind, ())}
            problems += check_fields(here, entry, fields)
    return problems


def _handler_problems(handlers: dict, credential_names: set) -> list[str]:
    from executor.handlers import all_handlers  # imports every handler module: only when used

    registered = all_handlers()
    problems = []
    for key, settings in handlers.items():
        here = ("handlers", key)
        if key not in registered:
            known = ", ".join(registered)
            problems.append(f"{path_text(here)}: no handler {key!r} is registered ({known})")
        elif not isinstance(settings, dict):
            problems.append(f"{path_text(here)}: must be a mapping of settings")
        else:
            fields = {**COMMON_HANDLER_SETTINGS, **HANDLER_SETTINGS.get(key, {})}
            problems += check_fields(here, settings, fields)
            problems += _handler_setting_problems(here, settings, credential_names)
    return problems


def _handler_setting_problems(here: tuple, settings: dict, credential_names: set) -> list[str]:
    problems = []
    name = settings.get("credentials")
    if isinstance(name, str) and name not in credential_names:
        known = ", ".join(sorted(credential_names)) or "none"
        problems.append(
            f"{path_text((*here, 'credentials'))}: no set {name!r} under credentials: ({known})"
        )
    if name and any(split_key(key)[0] == "api_key" for key in settings):
        problems.append(f"{path_text(here)}: give either credentials or ~api_key, not both")
    timeouts = settings.get("timeouts")
    if isinstance(timeouts, dict):
        problems += check_fields((*here, "timeouts"), timeouts, TIMEOUT_FIELDS)
    return problems


def _unprefixed(value, path: tuple = ()) -> list[str]:
    """The resource map is read by the executor as it is: no secrets, no bytes in it."""
    if isinstance(value, list):
        return [p for i, item in enumerate(value) for p in _unprefixed(item, (*path, i))]
    if not isinstance(value, dict):
        return []
    problems = []
    for key, item in value.items():
        name, secret, as_bytes = split_key(key)
        if secret or as_bytes:
            problems.append(f"{path_text((*path, key))}: no ~ or ^ keys in the resource map")
        problems += _unprefixed(item, (*path, key))
    return problems


# ---------------------------------------------------------------------------------------------
# The resource map, parsed by executor/resources.py's own parser


class _InlineResourceMap:
    """Stands in for the file executor.resources parses, so a config's resource map passes
    exactly the checks configs/resource_map.yaml does; messages start with `resource_map`."""

    def __init__(self, document):
        self._text = yaml.safe_dump(document, sort_keys=False)

    def read_text(self) -> str:
        return self._text

    def __str__(self) -> str:
        return "resource_map"


def parse_resource_map(document) -> dict[str, resources.Resource]:
    """Resources by name from a resource map held in a config ({resources: {...}}).

    Raises executor.resources.ResourceMapError naming the resource and key at fault.
    """
    return resources._parse_map(_InlineResourceMap(document))


def resource_map_problems(document) -> list[str]:
    """Every resource's first problem (the parser stops at one), or the map's shape problem."""
    try:
        parse_resource_map(document)
        return []
    except resources.ResourceMapError as exc:
        shape_problem = str(exc)
    entries = document.get("resources") if isinstance(document, dict) else None
    if not isinstance(entries, dict) or len(document) != 1:
        return [shape_problem]
    problems = []
    for name, settings in entries.items():
        try:
            parse_resource_map({"resources": {name: settings}})
        except resources.ResourceMapError as exc:
            problems.append(str(exc))
    return problems


KNOWN: dict[str, Callable[[dict], list[str]]] = {
    "api": _check_api,
    "service_map": _check_service_map,
}

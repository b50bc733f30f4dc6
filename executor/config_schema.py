"""The `service_map` config's schema (registered by executor/apps.py): what the executor reads.

resource_map  the executor's resource map ({resources: {...}}), checked by the same parser
              as configs/resource_map.yaml (executor/resources.py)
credentials   {<name>: {kind, ~secrets…}}, the kinds of executor/credentials.py
handlers      {<registered handler id>: settings}: a default credential set, timeouts,
              and the settings the handler itself reads (HANDLER_SETTINGS)
"""

import re

from django.conf import settings

from configs.protocol import path_text, split_key
from configs.schemas import Field, check_fields, mapping, text, url
from executor import resources
from executor.credentials import KINDS, NAME_PATTERN, OPTIONS
from executor.handlers import all_handlers


def _seconds_below_job_timeout(value) -> str | None:
    number = isinstance(value, int | float) and not isinstance(value, bool)
    limit = settings.SVC_JOB_TIMEOUT
    if not number or not 0 < value < limit:
        return f"must be a number of seconds above 0 and below SVC_JOB_TIMEOUT ({limit})"
    return None


def _credential_name(value) -> str | None:
    if isinstance(value, str) and re.fullmatch(NAME_PATTERN, value):
        return None
    return "must be a credential set name (letters, digits, . _ -)"


# ---------------------------------------------------------------------------------------------
# service_map

SERVICE_MAP_FIELDS = {
    "resource_map": Field(mapping, required=True, prefixable=False),
    "credentials": Field(mapping, prefixable=False),
    "handlers": Field(mapping, prefixable=False),
}
# Settings every registered handler takes: its default credential set (a name under
# `credentials:`) and the timeouts of one try (seconds; each below SVC_JOB_TIMEOUT).
COMMON_HANDLER_SETTINGS = {
    "credentials": Field(_credential_name, prefixable=False),
    "timeouts": Field(mapping, prefixable=False),
}
TIMEOUT_FIELDS = {
    name: Field(_seconds_below_job_timeout, prefixable=False)
    for name in ("connect", "read", "total")
}
# Settings a handler takes from the service_map besides the common ones, by handler id; a
# new handler with settings adds its entry here.
HANDLER_SETTINGS = {
    "openai.chat": {
        "api_key": Field(text, secret=True),  # the older inline form of a credential set
        "base_url": Field(url),
        "model": Field(text),
    },
}


def check_service_map(content: dict) -> list[str]:
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
            fields |= {key: Field(text, required=True, secret=True) for key in KINDS[kind]}
            fields |= {key: Field(text, prefixable=False) for key in OPTIONS.get(kind, ())}
            problems += check_fields(here, entry, fields)
    return problems


def _handler_problems(handlers: dict, credential_names: set) -> list[str]:
    registered = all_handlers()
    problems = []
    for key, configured in handlers.items():
        here = ("handlers", key)
        if key not in registered:
            known = ", ".join(registered)
            problems.append(f"{path_text(here)}: no handler {key!r} is registered ({known})")
        elif not isinstance(configured, dict):
            problems.append(f"{path_text(here)}: must be a mapping of settings")
        else:
            fields = {**COMMON_HANDLER_SETTINGS, **HANDLER_SETTINGS.get(key, {})}
            problems += check_fields(here, configured, fields)
            problems += _handler_setting_problems(here, configured, credential_names)
    return problems


def _handler_setting_problems(here: tuple, configured: dict, credential_names: set) -> list[str]:
    problems = []
    name = configured.get("credentials")
    if isinstance(name, str) and name not in credential_names:
        known = ", ".join(sorted(credential_names)) or "none"
        problems.append(
            f"{path_text((*here, 'credentials'))}: no set {name!r} under credentials: ({known})"
        )
    if name and any(split_key(key)[0] == "api_key" for key in configured):
        problems.append(f"{path_text(here)}: give either credentials or ~api_key, not both")
    timeouts = configured.get("timeouts")
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


def resource_map_problems(document) -> list[str]:
    """Every resource's first problem (the parser stops at one), or the map's shape problem."""
    try:
        resources.parse_resource_map(document, source="resource_map")
        return []
    except resources.ResourceMapError as exc:
        shape_problem = str(exc)
    entries = document.get("resources") if isinstance(document, dict) else None
    if not isinstance(entries, dict) or len(document) != 1:
        return [shape_problem]
    problems = []
    for name, given in entries.items():
        try:
            resources.parse_resource_map({"resources": {name: given}}, source="resource_map")
        except resources.ResourceMapError as exc:
            problems.append(str(exc))
    return problems

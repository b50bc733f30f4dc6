"""What each known config must contain: a registry the apps fill, and the field checks they
build their schemas from. Names nobody registered are stored free-form.

The app that owns a config registers its check when Django starts, the way NetBox's
registry works, so this package imports no app:

    # executor/apps.py, ExecutorConfig.ready()
    schemas.register("service_map", config_schema.check_service_map)

validate(name, content) checks loaded content (prefixes kept, secrets in plaintext) and
returns every problem as "path: message"; [] means valid. Registered today: `api` (api/
config_schema.py) and `service_map` (executor/config_schema.py).
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.apps import apps

from configs.protocol import path_text, split_key

Check = Callable[[Any], str | None]


@dataclass(frozen=True)
class Field:
    check: Check
    required: bool = False
    secret: bool = False  # must be written `~name`, so that it is stored encrypted
    prefixable: bool = True  # False: structure the code walks, never a secret or bytes


_registry: dict[str, Callable[[dict], list[str]]] = {}


class SchemasNotReady(RuntimeError):
    """validate() before Django's apps registered their schemas: it would pass anything."""


def register(name: str, check: Callable[[dict], list[str]]) -> None:
    """Make `check(content)` the schema of config `name` (its problems, [] when valid)."""
    if name in _registry and _registry[name] is not check:
        raise RuntimeError(f"config {name!r} has a schema registered already")
    _registry[name] = check


def registered() -> list[str]:
    return sorted(_registry)


def validate(name: str, content: dict) -> list[str]:
    if not apps.ready:
        raise SchemasNotReady("configs are validated once Django's apps are ready (django.setup())")
    check = _registry.get(name)
    return check(content) if check else []


# ---------------------------------------------------------------------------------------------
# Value checks: each returns why a value is wrong, or None


def text(value) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def url(value) -> str | None:
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts and parts.scheme in ("http", "https") and parts.netloc:
        return None
    return "must be an http(s) URL"


def positive_int(value) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return None
    return "must be a positive integer"


def mapping(value) -> str | None:
    return None if isinstance(value, dict) else "must be a mapping"


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

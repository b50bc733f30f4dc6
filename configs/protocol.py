"""The seed's YAML config protocol: `~key` secrets, `^key` bytes, `!ENV ${VAR}` substitution.

One config has three forms:

    loaded        load_text(): plain values, prefixes kept (`~api_key: sk-…`). Never stored.
    sealed        seal(): every `~` value replaced by {"$fernet": <token of its JSON>}, so any
                  YAML value (string, number, list, mapping) can be a secret. MongoDB holds this.
    materialized  materialize(): prefixes stripped, secrets decrypted, `^` values as UTF-8
                  bytes. What programs use.

A prefix may be `~`, `^` or both (`~^cert`: secret bytes) and works at any depth; below a `~`
key the whole value is one secret. mask() hides secrets for display, sha256() digests the
masked form (so it never depends on a secret, and stays the same across re-encryption).
Pure: no Django, no MongoDB.
"""

import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

import yaml
from cryptography.fernet import Fernet, InvalidToken, MultiFernet

SECRET, BYTES = "~", "^"
# The one key of a sealed secret's mapping; its value is the Fernet token (text).
SEALED_KEY = "$fernet"
# What mask() shows instead of a secret, and what diff shows for one whose value changed.
MASK = "********"
CHANGED_MASK = "******** (changed)"
# `${VAR}` or `${VAR:-default}` (the default applies when VAR is unset or empty).
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_MERGE_TAG = "tag:yaml.org,2002:merge"

Path = tuple[str | int, ...]


class ConfigError(ValueError):
    """One or more problems with a config, each one operator-readable line (`.problems`)."""

    def __init__(self, *problems: str):
        super().__init__("; ".join(problems))
        self.problems = list(problems)


# ---------------------------------------------------------------------------------------------
# Loading


class _Loader(yaml.SafeLoader):
    """SafeLoader plus `!ENV`, duplicate keys reported, and dates left as strings.

    Problems are collected in `problems` so one load reports every missing variable.
    """

    def __init__(self, stream, env: Mapping[str, str]):
        super().__init__(stream)
        self.env = env
        self.problems: list[str] = []

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                self.problems.append(f"{_line(key_node)}: duplicate key {key_node.value!r}")
            seen.add(key)
        return super().construct_mapping(node, deep)


# A config date is text to its program; YAML 1.1 would turn `2024-01-01` into a date object.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _construct_env(loader: _Loader, node) -> str | None:
    if not isinstance(node, yaml.ScalarNode):
        loader.problems.append(f"{_line(node)}: !ENV takes a string such as ${{VAR}}")
        return None
    raw = loader.construct_scalar(node)
    if not _VARIABLE.search(raw):
        loader.problems.append(f"{_line(node)}: !ENV {raw!r} names no ${{VAR}}")

    def substitute(match: re.Match) -> str:
        value = loader.env.get(match[1])
        if match[2] is not None and not value:
            return match[2]
        if value is None:
            loader.problems.append(f"{_line(node)}: environment variable {match[1]} is not set")
            return ""
        return value

    return _VARIABLE.sub(substitute, raw)


_Loader.add_constructor("!ENV", _construct_env)


class _DecimalTextLoader(_Loader):
    """_Loader that keeps decimals as written: `api: 1.10` pins the label "1.10", not 1.1."""


_DecimalTextLoader.add_constructor(
    "tag:yaml.org,2002:float", lambda loader, node: loader.construct_scalar(node)
)

# `!ENV${VAR}`, the tag glued to its value as the seed writes it, where a tag can start: YAML
# would read `!ENV$` as the tag and stop at the brace. A space after the tag fixes it.
_GLUED_ENV = re.compile(r"(?:^|(?<=[\s\[{,:-]))!ENV(?=[\"']|\$\{)", re.MULTILINE)


def load_text(
    text: str, *, env: Mapping[str, str] = os.environ, decimals_as_text: bool = False
) -> dict:
    """The loaded form of a config file; ConfigError lists every problem found.

    `!ENV ${VAR}` and the seed's `!ENV${VAR}` both substitute the variable. With
    `decimals_as_text`, a decimal such as `1.0` stays the text "1.0" (version labels)."""
    text = _GLUED_ENV.sub("!ENV ", text)
    loader = (_DecimalTextLoader if decimals_as_text else _Loader)(text, env)
    try:
        content = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_problem(exc)) from None
    finally:
        loader.dispose()
    if not isinstance(content, dict):
        raise ConfigError("the config must be a YAML mapping (key: value lines) at the top level")
    problems = loader.problems + check(content)
    if problems:
        raise ConfigError(*problems)
    return content


def check(content: Any, path: Path = ()) -> list[str]:
    """Protocol problems of loaded content: key types and prefixes, value types."""
    if isinstance(content, list):
        return [p for i, item in enumerate(content) for p in check(item, (*path, i))]
    if not isinstance(content, dict):
        return _value_problems(content, path)
    problems, names = [], {}
    for key, value in content.items():
        here = (*path, key)
        if not isinstance(key, str):
            problems.append(f"{path_text(path)}: {_key_type_problem(key)}")
            continue
        name, secret, as_bytes = split_key(key)
        problems += _key_problems(key, name, names, here)
        names.setdefault(name, key)
        if as_bytes and not isinstance(value, str):
            problems.append(f"{path_text(here)}: a ^ (bytes) value must be a string")
        elif secret and value == MASK:
            problems.append(f"{path_text(here)}: is the mask {MASK}; give the real value")
        else:
            problems += check(value, here)
    return problems


def _key_problems(key: str, name: str, names: dict, here: Path) -> list[str]:
    prefix = key[: len(key) - len(name)]
    if not name:
        return [f"{path_text(here)}: a key needs a name after its prefix"]
    if len(set(prefix)) != len(prefix):
        return [f"{path_text(here)}: repeated prefix (use ~, ^ or ~^)"]
    if name in names:
        return [f"{path_text(here)}: {name!r} is given twice (also as {names[name]!r})"]
    return []


def _key_type_problem(key: Any) -> str:
    if key is None:
        return "a null key (a bare ~ is null in YAML: write ~name)"
    return f"key {key!r} must be a string (quote it)"


def _value_problems(value: Any, path: Path) -> list[str]:
    if value is None or isinstance(value, str | bool | int):
        return []
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{path_text(path)}: not a finite number"]
    if isinstance(value, bytes):
        return [f"{path_text(path)}: !!binary is not supported; use a ^key with text"]
    return [f"{path_text(path)}: unsupported YAML value of type {type(value).__name__}"]


def split_key(key: str) -> tuple[str, bool, bool]:
    """('api_key', secret, as_bytes) for '~api_key'."""
    name = key.lstrip(SECRET + BYTES)
    prefix = key[: len(key) - len(name)]
    return name, SECRET in prefix, BYTES in prefix


def path_text(path: Path) -> str:
    """`handlers.openai.chat.~api_key`, `items[2].name`: where a value is, for messages."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text or "(top level)"


# ---------------------------------------------------------------------------------------------
# Sealing and reading


def seal(content: dict, fernet: Fernet | MultiFernet) -> dict:
    """A copy of loaded content with every `~` value encrypted: safe to store."""
    return _map_secrets(content, lambda path, value: _sealed(fernet.encrypt(_json(value))))


def unseal(sealed: dict, fernet: Fernet | MultiFernet) -> dict:
    """The loaded form back (prefixes kept, secrets decrypted): what `show --reveal` prints."""
    return _map_secrets(sealed, lambda path, value: json.loads(_decrypt(path, value, fernet)))


def materialize(sealed: dict, fernet: Fernet | MultiFernet) -> dict:
    """What programs use: prefixes stripped, secrets decrypted, `^` values as UTF-8 bytes."""
    return _plain(unseal(sealed, fernet))


def reseal(sealed: dict, fernet: MultiFernet) -> dict:
    """Every secret re-encrypted with the newest key (any key of `fernet` may decrypt it)."""

    def rotate(path: Path, value: Any) -> dict:
        try:
            return _sealed(fernet.rotate(_token(path, value)))
        except InvalidToken:
            raise ConfigError(_cannot_decrypt(path)) from None

    return _map_secrets(sealed, rotate)


def mask(sealed: dict, *, changed: Collection[Path] = ()) -> dict:
    """Secrets replaced by MASK (CHANGED_MASK for the paths in `changed`): for display."""
    return _map_secrets(sealed, lambda path, value: CHANGED_MASK if path in changed else MASK)


def secret_values(sealed: dict, fernet: Fernet | MultiFernet) -> dict[Path, Any]:
    """Each secret's plaintext value by its path (to tell which secrets two versions differ in)."""
    found = {}

    def collect(path: Path, value: Any) -> Any:
        found[path] = json.loads(_decrypt(path, value, fernet))
        return value

    _map_secrets(sealed, collect)
    return found


def has_secrets(content: dict) -> bool:
    found = []
    _map_secrets(content, lambda path, value: found.append(path))
    return bool(found)


def canonical(content: Any) -> str:
    """Key-sorted compact JSON: equal content, equal text."""
    return json.dumps(
        content, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def sha256(sealed: dict) -> str:
    """Digest of the masked canonical form: no plaintext in it, stable across re-encryption.

    A change of a secret's value alone does not change it (`config diff` shows such changes).
    """
    return hashlib.sha256(canonical(mask(sealed)).encode()).hexdigest()


def dump_yaml(content: dict) -> str:
    return yaml.safe_dump(
        content, sort_keys=False, allow_unicode=True, default_flow_style=False, width=100
    )


# ---------------------------------------------------------------------------------------------
# Helpers


def _map_secrets(value: Any, replace: Callable[[Path, Any], Any], path: Path = ()) -> Any:
    """A copy of `value` with each `~` value replaced by replace(path, value)."""
    if isinstance(value, dict):
        return {
            key: replace((*path, key), item)
            if isinstance(key, str) and split_key(key)[1]
            else _map_secrets(item, replace, (*path, key))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_map_secrets(item, replace, (*path, i)) for i, item in enumerate(value)]
    return value


def _plain(value: Any, path: Path = ()) -> Any:
    if isinstance(value, list):
        return [_plain(item, (*path, i)) for i, item in enumerate(value)]
    if not isinstance(value, dict):
        return value
    plain = {}
    for key, item in value.items():
        name, _, as_bytes = split_key(key)
        if as_bytes and not isinstance(item, str):
            raise ConfigError(f"{path_text((*path, key))}: a ^ (bytes) value must be a string")
        plain[name] = item.encode() if as_bytes else _plain(item, (*path, key))
    return plain


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()


def _sealed(token: bytes) -> dict:
    return {SEALED_KEY: token.decode()}


def _token(path: Path, value: Any) -> bytes:
    if not (isinstance(value, dict) and list(value) == [SEALED_KEY]):
        raise ConfigError(f"{path_text(path)}: not sealed (expected {{{SEALED_KEY}: token}})")
    return str(value[SEALED_KEY]).encode()


def _decrypt(path: Path, value: Any, fernet: Fernet | MultiFernet) -> bytes:
    try:
        return fernet.decrypt(_token(path, value))
    except InvalidToken:
        raise ConfigError(_cannot_decrypt(path)) from None


def _cannot_decrypt(path: Path) -> str:
    return f"cannot decrypt {path_text(path)}: wrong CONFIG_FERNET_KEY?"


def _line(node) -> str:
    return f"line {node.start_mark.line + 1}"


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    reason = getattr(exc, "problem", None) or str(exc)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}not valid YAML: {' '.join(str(reason).split())}"

"""The bootstrap config (the seed's "Meta Configuration"): which configs a component loads.

`configs/config.yaml`, or the file SVC_CONFIG_BOOTSTRAP names, read with the config protocol
(`!ENV` included) every time it is asked for: it is small, and an edit takes effect without a
restart. `meta.ids` maps a config name to `active` (follow the active version) or a version
number (pin it).
"""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from configs.protocol import ConfigError, load_text

# Environment variable naming another bootstrap file (e.g. one per component).
BOOTSTRAP_ENV = "SVC_CONFIG_BOOTSTRAP"
# The bootstrap shipped with the code, used when SVC_CONFIG_BOOTSTRAP is not set.
DEFAULT_BOOTSTRAP = Path(__file__).resolve().parent / "config.yaml"
# The bootstrap format this code reads (`version:`), and the one place configs live.
FORMAT_VERSION = 1
SOURCE = "mongo"
# Kept in step with configs.store.VERSIONS (not imported: this module needs no MongoDB driver).
COLLECTION = "config_versions"
FOLLOW_ACTIVE = "active"


@dataclass(frozen=True)
class Bootstrap:
    ids: dict[str, int | None]  # None: follow the active version
    mongo_uri: str
    fernet_key: str = field(repr=False)


def load_bootstrap(
    path: str | Path | None = None, *, env: Mapping[str, str] = os.environ
) -> Bootstrap:
    path = Path(path or env.get(BOOTSTRAP_ENV) or DEFAULT_BOOTSTRAP)
    try:
        content = load_text(path.read_text(encoding="utf-8"), env=env)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the bootstrap config ({exc})") from None
    except ConfigError as exc:
        raise ConfigError(*(f"{path}: {problem}" for problem in exc.problems)) from None
    problems = _problems(content)
    if problems:
        raise ConfigError(*(f"{path}: {problem}" for problem in problems))
    meta = content["meta"]
    return Bootstrap(
        ids={name: None if v == FOLLOW_ACTIVE else v for name, v in meta["ids"].items()},
        mongo_uri=(content.get("mongo") or {}).get("uri", ""),
        fernet_key=content.get("fernet_key") or "",
    )


def pinned_version(name: str) -> int | None:
    """The version of config `name` the bootstrap pins, or None to follow the active one."""
    return load_bootstrap().ids.get(name)


def _problems(content: dict) -> list[str]:
    problems = []
    if content.get("version") != FORMAT_VERSION:
        problems.append(f"version: must be {FORMAT_VERSION}")
    meta = content.get("meta")
    if not isinstance(meta, dict):
        return [*problems, "meta: must be a mapping with source, collection and ids"]
    if meta.get("source") != SOURCE:
        problems.append(f"meta.source: must be {SOURCE}")
    if meta.get("collection", COLLECTION) != COLLECTION:
        problems.append(f"meta.collection: must be {COLLECTION} (the only one supported)")
    if not isinstance(content.get("mongo", {}), dict):
        problems.append("mongo: must be a mapping (uri: …)")
    ids = meta.get("ids")
    if not isinstance(ids, dict):
        return [*problems, "meta.ids: must map config names to `active` or a version number"]
    for name, version in ids.items():
        pinned = isinstance(version, int) and not isinstance(version, bool) and version > 0
        if version != FOLLOW_ACTIVE and not pinned:
            problems.append(f"meta.ids.{name}: must be `active` or a positive version number")
    return problems

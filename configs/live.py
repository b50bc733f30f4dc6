"""Configs as running processes see them: the active (or pinned) version, kept fresh.

`config(name)` returns the materialized content (secrets decrypted, prefixes stripped) of the
version `configs/config.yaml` asks for: the active one, or a pinned number. Each process
keeps a copy and looks again at most every SVC_CONFIG_REFRESH_SECONDS: one small read of the active
pointer, and the version itself is loaded and decrypted only when it changed. So a new
active version takes effect in the API, the executor and recon within that many seconds (plus
the time a running request takes to finish), without a restart.

When MongoDB does not answer or a version cannot be decrypted, the last good copy is kept
(and the problem logged once per refresh); with no good copy, `config` returns None and the
callers fall back to their defaults (environment, shipped files).
"""

import logging
import threading
import time
from dataclasses import dataclass

from django.conf import settings

from configs import bootstrap, keys, protocol, store
from infra import logs

logger = logging.getLogger(__name__)


@dataclass
class _Entry:
    version: int | None
    content: dict | None
    checked_at: float


_entries: dict[str, _Entry] = {}
_lock = threading.Lock()


def config(name: str) -> dict | None:
    """The materialized content of config `name`, or None when there is none (yet)."""
    refresh = settings.SVC_CONFIG_REFRESH_SECONDS
    entry = _entries.get(name)
    if entry is None or time.monotonic() - entry.checked_at >= refresh:
        with _lock:
            entry = _entries.get(name)
            if entry is None or time.monotonic() - entry.checked_at >= refresh:
                entry = _entries[name] = _refresh(name, entry)
    return entry.content


def section(name: str, *path: str) -> dict:
    """A nested mapping of config `name` (e.g. `section("service_map", "handlers",
    "openai.chat")`), or {} when the config or any level of the path is absent."""
    value = config(name) or {}
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, dict) else {}


def forget() -> None:
    """Drop every cached copy (tests; a process that must see a change at once)."""
    with _lock:
        _entries.clear()


def _refresh(name: str, previous: _Entry | None) -> _Entry:
    now = time.monotonic()
    try:
        pinned = bootstrap.pinned_version(name)
        version = store.get(name, pinned) if pinned is not None else store.active(name)
        if version is None:
            return _Entry(None, None, now)
        if previous is not None and previous.version == version.version:
            return _Entry(previous.version, previous.content, now)
        # A config without secrets needs no key (CONFIG_FERNET_KEY may be unset).
        fernet = keys.fernet() if protocol.has_secrets(version.content) else None
        content = protocol.materialize(version.content, fernet)
        if fernet is not None:  # no log record may quote a decrypted secret (infra/logs.py)
            logs.register_secrets(protocol.secret_values(version.content, fernet).values())
    except Exception as exc:  # keep serving the last good copy; say why once per refresh
        logger.warning("config %s: keeping the last good version: %s", name, exc)
        if previous is not None:
            return _Entry(previous.version, previous.content, now)
        return _Entry(None, None, now)
    logger.info("config %s: version %s in effect", name, version.version)
    return _Entry(version.version, content, now)

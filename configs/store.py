"""Versioned configs in MongoDB: immutable versions, one active version per name, an event log.

    config_versions  {name, version, label, label_key, content (sealed), sha256, created_by,
                     created_at, comment}; unique (name, version) and label_key; a version
                     never changes, except that rotate_keys() re-encrypts its secrets (same
                     plaintext, same sha256)
    config_active    {_id: name, version, activated_at, by}
    config_events    {name, action: upload|activate|rollback|rotate, version, previous, by, at,
                     comment}

Numbers count 1, 2, 3… per name (an upload may ask for a free number of its own); an upload
may also give its version a label such as `1.0` (the seed's ids), unique per name, by which
every command and a bootstrap pin can name it. Rollback without `to` activates the highest
version below the active one, so repeated rollbacks walk back through the history.

The collections are the bootstrap's (configs/bootstrap.py): `meta.collection` names the
versions collection (default config_versions) and the other two share its prefix
(`<prefix>_active`, `<prefix>_events`); `mongo:` names the server and database (default: the
app's, infra/stores.py). Only this module reads or writes them (the admin and the commands
call it; tests drop them between cases).
"""

import difflib
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.errors import DuplicateKeyError

from configs import bootstrap, keys, protocol, schemas
from configs.protocol import ConfigError
from configs.refs import Ref, is_label, parse_ref
from infra import stores

# The collections of the shipped bootstrap; another `meta.collection` moves all three.
VERSIONS, ACTIVE, EVENTS = "config_versions", "config_active", "config_events"
COLLECTIONS = (VERSIONS, ACTIVE, EVENTS)
UPLOAD, ACTIVATE, ROLLBACK, ROTATE = "upload", "activate", "rollback", "rotate"
# Tries at taking the next version number while concurrent uploads of the same name race for
# it: each lost try means another upload won one, so this many can upload at the same moment.
UPLOAD_ATTEMPTS = 20
# Largest config file accepted: a MongoDB document holds 16 MiB, and sealing grows secrets.
MAX_TEXT_BYTES = 1024 * 1024
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    content: dict  # sealed: `~` values are {"$fernet": token}
    sha256: str
    created_at: datetime
    created_by: str
    comment: str
    label: str = ""

    @classmethod
    def from_document(cls, doc: dict) -> "Version":
        return cls(
            name=doc["name"],
            version=doc["version"],
            content=doc["content"],
            sha256=doc["sha256"],
            created_at=doc["created_at"],
            created_by=doc.get("created_by", ""),
            comment=doc.get("comment", ""),
            label=doc.get("label") or "",
        )

    @property
    def title(self) -> str:
        """`3`, or `3 (1.0)` for a labelled version: how messages and listings name it."""
        return f"{self.version} ({self.label})" if self.label else str(self.version)


def collection_names(loaded: bootstrap.Bootstrap | None = None) -> tuple[str, str, str]:
    """(versions, active, events) collection names of the bootstrap in effect."""
    versions = (loaded or bootstrap.load_bootstrap()).collection
    prefix = versions.removesuffix("_versions")
    return versions, f"{prefix}_active", f"{prefix}_events"


# ---------------------------------------------------------------------------------------------
# Writes


def upload(
    name: str,
    text: str,
    *,
    by: str,
    comment: str = "",
    version: Ref | None = None,
    activate: bool = True,
) -> Version:
    """Load, validate and seal `text`, then store it as a new version (and activate it).

    `version`: a number to take (it must be free), or a label such as "1.0" for the next
    number. Any problem raises ConfigError listing every problem found; then nothing is stored.
    """
    _check_name(name)
    number, label = _requested(version)
    if len(text.encode()) > MAX_TEXT_BYTES:
        raise ConfigError(f"the config is larger than {MAX_TEXT_BYTES} bytes")
    content = protocol.load_text(text)
    problems = schemas.validate(name, content)
    if problems:
        raise ConfigError(*problems)
    sealed = protocol.seal(content, keys.fernet()) if protocol.has_secrets(content) else content
    stored = _insert(
        {
            "name": name,
            "label": label,
            "content": sealed,
            "sha256": protocol.sha256(sealed),
            "created_by": by,
            "created_at": _now(),
            "comment": comment,
        },
        number,
    )
    _record(name, UPLOAD, stored.version, None, by=by, comment=comment)
    if activate:
        previous = _point_active(name, stored.version, by=by)
        _record(name, ACTIVATE, stored.version, previous, by=by, comment=comment)
    return stored


def activate(name: str, version: Ref, *, by: str, comment: str = "") -> Version:
    """Make `version` the active one."""
    target = get(name, version)
    previous = _point_active(name, target.version, by=by)
    _record(name, ACTIVATE, target.version, previous, by=by, comment=comment)
    return target


def rollback(name: str, *, to: Ref | None = None, by: str, comment: str = "") -> Version:
    """Activate version `to` (a number or a label), by default the highest version below the
    active one."""
    current = active(name)
    if current is None:
        raise ConfigError(f"{name}: no active version to roll back from")
    target = get(name, to) if to is not None else _version_before(name, current.version)
    if target.version == current.version:
        raise ConfigError(f"{name}: version {target.title} is already active")
    # Conditional on the version we read, so a concurrent change is not silently overwritten.
    moved = _active().update_one(
        {"_id": name, "version": current.version},
        {"$set": {"version": target.version, "activated_at": _now(), "by": by}},
    )
    if not moved.matched_count:
        raise ConfigError(f"{name}: the active version changed meanwhile; check it and retry")
    _record(name, ROLLBACK, target.version, current.version, by=by, comment=comment)
    return target


def rotate_keys(*, by: str) -> int:
    """Re-encrypt every stored version with the newest key; returns how many had secrets.

    Every version is decrypted before any is written, so a version that no key in
    CONFIG_FERNET_KEY opens stops the rotation with nothing changed.
    """
    fernet = keys.fernet()
    resealed = []
    for doc in _versions().find({}, {"name": 1, "version": 1, "content": 1}):
        if not protocol.has_secrets(doc["content"]):
            continue
        try:
            resealed.append((doc, protocol.reseal(doc["content"], fernet)))
        except ConfigError as exc:
            raise ConfigError(f"{doc['name']} version {doc['version']}: {exc}") from None
    for doc, content in resealed:
        _versions().update_one({"_id": doc["_id"]}, {"$set": {"content": content}})
    for name in sorted({doc["name"] for doc, _ in resealed}):
        count = sum(doc["name"] == name for doc, _ in resealed)
        _record(name, ROTATE, None, None, by=by, comment=f"re-encrypted {count} version(s)")
    return len(resealed)


def ensure_indexes() -> None:
    versions = _versions()
    versions.create_index(
        [("name", ASCENDING), ("version", ASCENDING)], unique=True, name="name_version"
    )
    # Versions stored before labels existed get the key an unlabelled version has.
    for doc in versions.find({"label_key": {"$exists": False}}, {"name": 1, "version": 1}):
        key = _label_key(doc["name"], "", doc["version"])
        versions.update_one({"_id": doc["_id"]}, {"$set": {"label_key": key}})
    versions.create_index([("label_key", ASCENDING)], unique=True, name="label_key")
    _events().create_index([("name", ASCENDING), ("at", ASCENDING)], name="name_at")


# ---------------------------------------------------------------------------------------------
# Reads


def versions(name: str | None = None) -> list[Version]:
    """Every version (of `name`, or of all configs), by name then number."""
    query = {} if name is None else {"name": name}
    cursor = _versions().find(query).sort([("name", ASCENDING), ("version", ASCENDING)])
    return [Version.from_document(doc) for doc in cursor]


def get(name: str, version: Ref | None = None) -> Version:
    """Version `version` (a number or a label) of `name`, or the active one when None;
    ConfigError if absent."""
    if version is None:
        found = active(name)
        if found is None:
            raise ConfigError(_absent(name) or f"{name}: no version is active")
        return found
    ref = _ref(version)
    query = {"name": name, "label": ref} if is_label(ref) else {"name": name, "version": ref}
    doc = _versions().find_one(query)
    if doc is None:
        raise ConfigError(_absent(name) or f"{name}: no version {ref}")
    return Version.from_document(doc)


def active(name: str) -> Version | None:
    pointer = _active().find_one({"_id": name})
    if pointer is None:
        return None
    doc = _versions().find_one({"name": name, "version": pointer["version"]})
    return Version.from_document(doc) if doc else None


def active_versions() -> dict[str, int]:
    """The active version number of every config that has one."""
    return {doc["_id"]: doc["version"] for doc in _active().find()}


def events(name: str | None = None, *, limit: int = 100) -> list[dict]:
    """The newest `limit` events (of `name`, or of all configs), newest first."""
    query = {} if name is None else {"name": name}
    cursor = (
        _events()
        .find(query, {"_id": 0})
        .sort([("at", DESCENDING), ("_id", DESCENDING)])
        .limit(limit)
    )
    return list(cursor)


def diff(name: str, v1: Ref, v2: Ref) -> list[str]:
    """Unified diff of the masked YAML of two versions; a secret whose value changed shows
    as CHANGED_MASK on the v2 side (this needs the key)."""
    old, new = get(name, v1), get(name, v2)
    changed = _changed_secrets(old.content, new.content)
    return list(
        difflib.unified_diff(
            protocol.dump_yaml(protocol.mask(old.content)).splitlines(),
            protocol.dump_yaml(protocol.mask(new.content, changed=changed)).splitlines(),
            fromfile=f"{name} version {old.title}",
            tofile=f"{name} version {new.title}",
            lineterm="",
        )
    )


# ---------------------------------------------------------------------------------------------
# Helpers


def _collection(position: int):
    loaded = bootstrap.load_bootstrap()
    database = stores.mongo_db_at(loaded.mongo.uri, loaded.mongo.db)
    return database[collection_names(loaded)[position]]


def _versions():
    return _collection(0)


def _active():
    return _collection(1)


def _events():
    return _collection(2)


def _ref(version: Ref) -> Ref:
    if isinstance(version, bool) or not isinstance(version, int | str):
        raise ConfigError(f"a version is a number or a label, not {version!r}")
    try:
        return parse_ref(str(version))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _requested(version: Ref | None) -> tuple[int | None, str]:
    """(number asked for, label given) of an upload's `version`."""
    if version is None:
        return None, ""
    ref = _ref(version)
    return (None, ref) if is_label(ref) else (ref, "")


def _label_key(name: str, label: str, number: int) -> str:
    """Unique per version: its label's key, or (unlabelled) one only its number has."""
    return f"{name}@{label}" if label else f"{name}#{number}"


def _now() -> datetime:
    # MongoDB keeps milliseconds: truncate, so a Version equals its own stored copy.
    at = datetime.now(UTC)
    return at.replace(microsecond=at.microsecond // 1000 * 1000)


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"config name {name!r} must be 1-64 letters, digits, . _ - (starting alphanumeric)"
        )


def _insert(doc: dict, requested: int | None) -> Version:
    ensure_indexes()  # cheap when they exist; a dropped collection gets them back
    name, label = doc["name"], doc["label"]
    for _ in range(UPLOAD_ATTEMPTS):
        number = requested or _latest_number(name) + 1
        stored = {**doc, "version": number, "label_key": _label_key(name, label, number)}
        try:
            _versions().insert_one(stored)
        except DuplicateKeyError:
            if label and _versions().find_one({"label_key": stored["label_key"]}, {"_id": 1}):
                raise ConfigError(
                    f"{name}: label {label} exists already (versions are immutable)"
                ) from None
            if requested:
                raise ConfigError(
                    f"{name}: version {requested} exists already (versions are immutable)"
                ) from None
            continue
        return Version.from_document(stored)
    raise ConfigError(f"{doc['name']}: too many concurrent uploads took the next version; retry")


def _latest_number(name: str) -> int:
    doc = _versions().find_one({"name": name}, {"version": 1}, sort=[("version", DESCENDING)])
    return doc["version"] if doc else 0


def _version_before(name: str, number: int) -> Version:
    doc = _versions().find_one(
        {"name": name, "version": {"$lt": number}}, sort=[("version", DESCENDING)]
    )
    if doc is None:
        raise ConfigError(f"{name}: no version before {number} to roll back to")
    return Version.from_document(doc)


def _point_active(name: str, number: int, *, by: str) -> int | None:
    """Set the active version; returns the one it replaces (None if there was none)."""
    before = _active().find_one_and_update(
        {"_id": name},
        {"$set": {"version": number, "activated_at": _now(), "by": by}},
        upsert=True,
        return_document=ReturnDocument.BEFORE,
    )
    return before["version"] if before else None


def _record(name: str, action: str, version, previous, *, by: str, comment: str = "") -> None:
    _events().insert_one(
        {
            "name": name,
            "action": action,
            "version": version,
            "previous": previous,
            "by": by,
            "at": _now(),
            "comment": comment,
        }
    )


def _absent(name: str) -> str | None:
    """The message for a name of which no version exists at all, else None."""
    if _versions().find_one({"name": name}, {"_id": 1}) is None:
        return f"no config named {name!r} (see `config list`)"
    return None


def _changed_secrets(old: dict, new: dict) -> set:
    if not (protocol.has_secrets(old) and protocol.has_secrets(new)):
        return set()
    fernet = keys.fernet()
    before, after = protocol.secret_values(old, fernet), protocol.secret_values(new, fernet)
    return {path for path, value in after.items() if path in before and before[path] != value}

"""The bootstrap config (the seed's "Meta Configuration"): where a component's configs live,
which of them it loads at which version, and the key that decrypts them.

    version: 1.0
    meta:
      source: mongo
      collection: !ENV${CFG_COLLECTION}     # the versions collection (default config_versions)
      ids:                                  # config: `active`, a version number or a label
        api: 1.0
        service_map: active
    mongo:                                  # where the configs are; default: the app's MongoDB
      uri: !ENV${MONGO_URI}
      port: !ENV${MONGO_PORT}               # used when the uri names no port
      db: !ENV${MONGO_DB}                   # the database, instead of the uri's
    fernet_key: !ENV ${decrypt_key}         # key(s) that decrypt `~` values, newest first

The seed's text loads as it is written: `!ENV${VAR}` as well as `!ENV ${VAR}`, decimals such
as `1.0` kept as the labels they are (`1.10` is not `1.1`). The file is `configs/config.yaml`,
or the one SVC_CONFIG_BOOTSTRAP names, read every time it is asked for: it is small, and an
edit (or a changed variable) takes effect without a restart.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from configs import refs
from configs.protocol import ConfigError, load_text
from infra import stores

# The bootstrap shipped with the code, used when SVC_CONFIG_BOOTSTRAP is not set.
DEFAULT_BOOTSTRAP = Path(__file__).resolve().parent / "config.yaml"
# The bootstrap formats this code reads (`version:`): the seed writes 1.0.
FORMAT_VERSIONS = ("1", "1.0")
SOURCE = "mongo"
# Where versions live unless `meta.collection` says otherwise.
DEFAULT_COLLECTION = "config_versions"
FOLLOW_ACTIVE = "active"
# The variable the shipped bootstrap reads the key from: what messages name when no other is.
DEFAULT_KEY_VARIABLE = "CONFIG_FERNET_KEY"
# A MongoDB collection name this code accepts (no `$`, no leading `system.`).
_COLLECTION = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,100}")
# `fernet_key: !ENV ${NAME}` (or glued, or quoted): the variable named, for messages.
_KEY_VARIABLE = re.compile(r"^fernet_key:\s*!ENV\s*[\"']?\$\{([A-Za-z_][A-Za-z0-9_]*)", re.M)


@dataclass(frozen=True)
class MongoTarget:
    """Where the configs are: `uri` (empty: the app's own MongoDB), `db` (empty: the uri's)."""

    uri: str = ""
    db: str = ""

    def shown(self) -> str:
        """The MongoDB the configs are in, fit to print (its password replaced)."""
        return stores.redacted_uri(self.uri or settings.MONGO_URI)


@dataclass(frozen=True)
class Bootstrap:
    ids: dict[str, refs.Ref | None]  # None: follow the active version
    collection: str = DEFAULT_COLLECTION
    mongo: MongoTarget = MongoTarget()
    fernet_key: str = field(default="", repr=False)
    key_variable: str = DEFAULT_KEY_VARIABLE  # the variable fernet_key comes from
    path: Path = DEFAULT_BOOTSTRAP


def load_bootstrap(path: str | Path | None = None, *, env: Mapping[str, str] | None = None):
    """The bootstrap at `path`, else SVC_CONFIG_BOOTSTRAP's, else the shipped one."""
    path = Path(path or settings.SVC_CONFIG_BOOTSTRAP or DEFAULT_BOOTSTRAP)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the bootstrap config ({exc})") from None
    return parse_bootstrap(text, path=path, env=env)


def parse_bootstrap(
    text: str, *, path: Path = DEFAULT_BOOTSTRAP, env: Mapping[str, str] | None = None
) -> Bootstrap:
    try:
        content = load_text(text, decimals_as_text=True, **({} if env is None else {"env": env}))
    except ConfigError as exc:
        raise ConfigError(*(f"{path}: {problem}" for problem in exc.problems)) from None
    problems = _problems(content)
    if problems:
        raise ConfigError(*(f"{path}: {problem}" for problem in problems))
    meta, mongo = content["meta"], content.get("mongo") or {}
    variable = _KEY_VARIABLE.search(text)
    return Bootstrap(
        ids={name: _ref(value) for name, value in meta["ids"].items()},
        collection=meta.get("collection") or DEFAULT_COLLECTION,
        mongo=_target(mongo),
        fernet_key=content.get("fernet_key") or "",
        key_variable=variable[1] if variable else DEFAULT_KEY_VARIABLE,
        path=path,
    )


def pinned_version(name: str) -> refs.Ref | None:
    """The version of config `name` the bootstrap pins (a number or a label), or None to
    follow the active one."""
    return load_bootstrap().ids.get(name)


def _ref(value) -> refs.Ref | None:
    return None if value == FOLLOW_ACTIVE else refs.parse_ref(str(value))


def _target(mongo: dict) -> MongoTarget:
    uri, port = str(mongo.get("uri") or ""), str(mongo.get("port") or "")
    if uri and port and stores.uri_port(uri) is None:
        uri = stores.uri_with_port(uri, int(port))
    return MongoTarget(uri=uri, db=str(mongo.get("db") or ""))


def _problems(content: dict) -> list[str]:
    problems = []
    if str(content.get("version")) not in FORMAT_VERSIONS:
        problems.append(f"version: must be {' or '.join(FORMAT_VERSIONS)}")
    meta = content.get("meta")
    if not isinstance(meta, dict):
        return [*problems, "meta: must be a mapping with source, collection and ids"]
    if meta.get("source") != SOURCE:
        problems.append(f"meta.source: must be {SOURCE}")
    collection = meta.get("collection", DEFAULT_COLLECTION)
    if not (isinstance(collection, str) and _COLLECTION.fullmatch(collection)):
        problems.append(
            "meta.collection: must be a MongoDB collection name (letters, digits, _ . -)"
        )
    problems += _mongo_problems(content.get("mongo", {}))
    if not isinstance(content.get("fernet_key", ""), str | None):
        problems.append("fernet_key: must be text (one key, or several separated by commas)")
    ids = meta.get("ids")
    if not isinstance(ids, dict):
        return [*problems, "meta.ids: must map config names to `active`, a number or a label"]
    for name, version in ids.items():
        if version != FOLLOW_ACTIVE and refs.ref_problem(str(version)):
            problems.append(
                f"meta.ids.{name}: must be `active`, a positive version number or a label "
                "such as 1.0"
            )
    return problems


def _mongo_problems(mongo) -> list[str]:
    if mongo is None:
        return []
    if not isinstance(mongo, dict):
        return ["mongo: must be a mapping (uri, port, db)"]
    problems = [
        f"mongo.{key}: unknown key (known: uri, port, db)"
        for key in mongo
        if key not in ("uri", "port", "db")
    ]
    uri, port = str(mongo.get("uri") or ""), str(mongo.get("port") or "")
    if uri and not uri.startswith(("mongodb://", "mongodb+srv://")):
        problems.append("mongo.uri: must be a mongodb:// URI")
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        problems.append("mongo.port: must be a port number")
    elif uri and port and stores.uri_port(uri) not in (None, int(port)):
        problems.append(f"mongo.port: {port} disagrees with the port in mongo.uri")
    db = mongo.get("db")
    if db not in (None, "") and not (
        isinstance(db, str) and re.fullmatch(r"[A-Za-z0-9_-]{1,63}", db)
    ):
        problems.append("mongo.db: must be a database name (letters, digits, _ -)")
    return problems

"""`config upload|list|show|diff|rollback|rotate-keys`: versioned application configs in MongoDB."""

import argparse
import getpass
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError
from pymongo.errors import PyMongoError, ServerSelectionTimeoutError

from configs import bootstrap, keys, protocol, store
from configs.protocol import ConfigError
from configs.refs import Ref, parse_ref
from infra import logs, stores


def version_ref(text: str) -> Ref:
    """A version as the commands take it: its number (3) or its label (1.0)."""
    try:
        return parse_ref(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class Command(BaseCommand):
    help = "Upload, inspect, diff and roll back versioned configs; re-encrypt them on key rotation."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        upload = actions.add_parser("upload", help="validate FILE, store it as a new version")
        upload.add_argument("file", help="config YAML file (the ~ ^ !ENV protocol)")
        upload.add_argument("--name", required=True, help="config name, e.g. service_map")
        upload.add_argument(
            "--version",
            type=version_ref,
            help="a label such as 1.0 (numbered next), or a free version number (default: next)",
        )
        upload.add_argument("--comment", default="", help="why, for the history")
        listing = actions.add_parser("list", help="versions, the active one marked *")
        listing.add_argument("name", nargs="?")
        show = actions.add_parser("show", help="print a version as YAML, secrets masked")
        show.add_argument("name")
        show.add_argument(
            "--version", type=version_ref, help="number or label (default: the active version)"
        )
        show.add_argument("--reveal", action="store_true", help="print secrets in plaintext")
        diff = actions.add_parser("diff", help="unified diff of two versions, secrets masked")
        diff.add_argument("name")
        diff.add_argument("v1", type=version_ref, help="number or label")
        diff.add_argument("v2", type=version_ref, help="number or label")
        rollback = actions.add_parser("rollback", help="activate an earlier version")
        rollback.add_argument("name")
        rollback.add_argument(
            "--to", type=version_ref, help="number or label (default: the one before the active)"
        )
        actions.add_parser("rotate-keys", help="re-encrypt every version with the newest key")

    def handle(self, *args, action: str, **options):
        run = {
            "upload": self.upload,
            "list": self.list,
            "show": self.show,
            "diff": self.diff,
            "rollback": self.rollback,
            "rotate-keys": self.rotate_keys,
        }[action]
        try:
            run(**options)
        except ConfigError as exc:
            raise CommandError(str(exc)) from None
        except ServerSelectionTimeoutError:
            raise CommandError(
                f"MongoDB at {_configs_store()} did not answer: check MONGO_URI (or the "
                "bootstrap's mongo.uri) and that the server is up (`make run` starts one)"
            ) from None
        except PyMongoError as exc:  # a driver's message may quote the URI: redacted
            message = logs.redact(f"MongoDB: {' '.join(str(exc).split())[:200]}")
            raise CommandError(message) from None

    def upload(self, *, file: str, name: str, version: Ref | None, comment: str, **_):
        text = _read(file)
        try:
            stored = store.upload(name, text, by=_by(), comment=comment, version=version)
        except ConfigError as exc:
            for problem in exc.problems:
                self.stderr.write(f"{file}: {problem}")
            count = len(exc.problems)
            raise CommandError(
                f"{file}: {count} problem{'s' if count != 1 else ''}; nothing was stored"
            ) from None
        self.stdout.write(
            f"uploaded {name} version {stored.title} (active, sha256 {stored.sha256[:12]})"
        )

    def list(self, *, name: str | None, **_):
        found = store.versions(name)
        if not found and not name:
            self.stdout.write("no configs stored yet (manage.py config upload FILE --name NAME)")
            return
        if not found:
            raise ConfigError(f"no config named {name!r}")
        active = store.active_versions()
        rows = [("NAME", "VERSION", "LABEL", "ACTIVE", "SHA256", "BY", "WHEN", "COMMENT")]
        rows += [
            (
                v.name,
                str(v.version),
                v.label,
                "*" if active.get(v.name) == v.version else "",
                v.sha256[:12],
                v.created_by,
                v.created_at.strftime("%Y-%m-%d %H:%M:%S UTC"),
                v.comment,
            )
            for v in found
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            self.stdout.write("  ".join([*cells, row[-1]]).rstrip())

    def show(self, *, name: str, version: Ref | None, reveal: bool, **_):
        found = store.get(name, version)
        active = store.active_versions().get(name) == found.version
        content = found.content
        if reveal and protocol.has_secrets(content):
            content = protocol.unseal(content, keys.fernet())
        elif not reveal:
            content = protocol.mask(content)
        self.stdout.write(
            f"# {name} version {found.title}{' (active)' if active else ''}, "
            f"sha256 {found.sha256[:12]}, by {found.created_by} at "
            f"{found.created_at:%Y-%m-%d %H:%M:%S} UTC"
        )
        text = protocol.dump_yaml(content)
        # Masked also: a password in a URI written as a plain value (it belonged in a `~` key).
        self.stdout.write(text if reveal else stores.redact_uri_passwords(text), ending="")

    def diff(self, *, name: str, v1: Ref, v2: Ref, **_):
        lines = store.diff(name, v1, v2)
        if not lines:
            self.stderr.write(f"{name}: versions {v1} and {v2} have the same content")
        for line in lines:
            self.stdout.write(stores.redact_uri_passwords(line))

    def rollback(self, *, name: str, to: Ref | None, **_):
        before = store.get(name)
        target = store.rollback(name, to=to, by=_by())
        self.stdout.write(f"{name}: version {target.title} is active (was {before.title})")

    def rotate_keys(self, **_):
        count = store.rotate_keys(by=_by())
        self.stdout.write(
            f"re-encrypted {count} version(s) with the newest key; "
            f"older keys can now be removed from {keys.key_variable()}"
        )


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise CommandError(f"cannot read {path}: not UTF-8 text") from None


def _configs_store() -> str:
    """Where the configs are, password replaced, for messages."""
    try:
        return bootstrap.load_bootstrap().mongo.shown()
    except ConfigError:
        return bootstrap.MongoTarget().shown()


def _by() -> str:
    """Who ran the command, for the history (the login name; `manage.py` when unknown)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "manage.py"

"""`catalog import FILE.yaml` · `catalog export [--output FILE]`: the catalog as code."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from api.services.catalog import (
    CatalogFileError,
    catalog_dump_yaml,
    catalog_export,
    catalog_import,
    catalog_load_yaml,
)


class Command(BaseCommand):
    help = "Import the catalog from a YAML file (all or nothing), or export it as YAML."

    def add_arguments(self, parser):
        actions = parser.add_subparsers(dest="action", required=True)
        importing = actions.add_parser("import", help="validate FILE, then upsert it")
        importing.add_argument("file", help="catalog YAML file (format: API.md)")
        exporting = actions.add_parser("export", help="print the catalog as YAML")
        exporting.add_argument("--output", "-o", help="write to this file instead of stdout")

    def handle(self, *args, action: str, **options):
        if action == "import":
            self.import_file(options["file"])
        else:
            self.export(options.get("output"))

    def import_file(self, path: str) -> None:
        try:
            data = catalog_load_yaml(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CommandError(f"cannot read {path}: not UTF-8 text") from None
        except CatalogFileError as exc:
            raise CommandError(f"{path}: {exc}") from None
        report = catalog_import(data=data)
        if not report.ok:
            for problem in report.problems:
                self.stderr.write(f"{path}: {problem}")
            count = len(report.problems)
            raise CommandError(
                f"{path}: {count} problem{'s' if count != 1 else ''}; nothing was imported"
            )
        self.stdout.write(f"imported {path}: {report.summary()}")

    def export(self, output: str | None) -> None:
        text = catalog_dump_yaml(catalog_export())
        if not output:
            self.stdout.write(text, ending="")
            return
        try:
            Path(output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {output}: {exc.strerror or exc}") from None
        self.stderr.write(f"exported the catalog to {output}")

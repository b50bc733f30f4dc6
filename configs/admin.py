"""Read-only admin pages for versioned configs, read from MongoDB through configs/store.py.

Configs have no SQL table: ConfigVersion (configs/models.py) only gives the admin index a
"Configs" entry and a view permission. Its ModelAdmin replaces every URL with four pages:

    configversion/                       each config: active version, versions, latest upload
    configversion/<name>/                its versions and events, newest first
    configversion/<name>/<version>/      one version as YAML, secrets masked
    configversion/<name>/diff/<v1>/<v2>/ store.diff() of two versions

Content is shown only through protocol.mask(), for every user: no page shows a secret
(`manage.py config show --reveal` is the one way to see one). Only the diff uses the key, to
mark a secret whose value changed. Changes go through `manage.py config`, so there are no
add, change or delete views.
"""

from collections import defaultdict

from django.contrib import admin
from django.template.response import TemplateResponse

from configs import protocol, store
from configs.models import ConfigVersion
from configs.protocol import ConfigError
from infra.admin_pages import ReadOnlyPageAdmin

TEMPLATES = "admin/configs/configversion"
# Events shown on a config's page; older ones stay in MongoDB.
EVENTS_SHOWN = 100


@admin.register(ConfigVersion)
class ConfigVersionAdmin(ReadOnlyPageAdmin):
    def pages(self):
        return [
            ("", self.configs_view, "changelist"),
            ("<str:name>/", self.config_view, "config"),
            ("<str:name>/<int:version>/", self.version_view, "version"),
            ("<str:name>/diff/<int:v1>/<int:v2>/", self.diff_view, "diff"),
        ]

    # -----------------------------------------------------------------------------------------
    # Pages

    def configs_view(self, request):
        context = {"configs": config_summaries()}
        return self._render(request, "configs.html", "Configs", context)

    def config_view(self, request, name: str):
        versions = store.versions(name)
        if not versions:
            return self._not_found(request, name, f"There is no config named {name!r}.")
        active = store.active_versions().get(name)
        context = {
            "name": name,
            "active": active,
            "versions": version_rows(versions, active),
            "events": store.events(name, limit=EVENTS_SHOWN),
            "events_shown": EVENTS_SHOWN,
        }
        return self._render(request, "config.html", name, context)

    def version_view(self, request, name: str, version: int):
        try:
            found = store.get(name, version)
        except ConfigError as exc:
            return self._not_found(request, name, str(exc))
        active = store.active_versions().get(name)
        earlier = [v.version for v in store.versions(name) if v.version < version]
        context = {
            "name": name,
            "found": found,
            "is_active": version == active,
            "active": active,
            "previous": max(earlier, default=None),
            "yaml": protocol.dump_yaml(protocol.mask(found.content)),
        }
        return self._render(request, "version.html", f"{name} version {version}", context)

    def diff_view(self, request, name: str, v1: int, v2: int):
        try:
            store.get(name, v1), store.get(name, v2)
        except ConfigError as exc:
            return self._not_found(request, name, str(exc))
        try:
            lines, problem = store.diff(name, v1, v2), None
        except ConfigError as exc:  # a changed secret needs the key to be recognised
            lines, problem = [], str(exc)
        context = {"name": name, "v1": v1, "v2": v2, "lines": diff_rows(lines), "problem": problem}
        return self._render(request, "diff.html", f"{name}: version {v1} → {v2}", context)

    # -----------------------------------------------------------------------------------------
    # Helpers

    def _render(self, request, template: str, title: str, context: dict, status: int = 200):
        page = {**self.admin_site.each_context(request), "opts": self.opts, "title": title}
        return TemplateResponse(request, f"{TEMPLATES}/{template}", page | context, status=status)

    def _not_found(self, request, name: str, message: str):
        context = {"name": name, "message": message}
        return self._render(request, "not_found.html", "Config not found", context, status=404)


def config_summaries() -> list[dict]:
    """Per config name: active version, number of versions, latest upload (by upload time)."""
    by_name = defaultdict(list)
    for version in store.versions():
        by_name[version.name].append(version)
    active = store.active_versions()
    return [
        {
            "name": name,
            "active": active.get(name),
            "count": len(versions),
            "latest": max(versions, key=lambda v: (v.created_at, v.version)),
        }
        for name, versions in sorted(by_name.items())
    ]


def version_rows(versions: list[store.Version], active: int | None) -> list[dict]:
    """Newest first, each with whether it is active and the version before it (for a diff)."""
    rows, previous = [], None
    for version in versions:  # store.versions() sorts by number
        rows.append({"v": version, "is_active": version.version == active, "previous": previous})
        previous = version.version
    return rows[::-1]


def diff_rows(lines: list[str]) -> list[tuple[str, str]]:
    """(kind, line) for each line of a unified diff: header, hunk, added, removed or same."""
    rows = []
    for number, line in enumerate(lines):
        if number < 2 and line.startswith(("---", "+++")):
            kind = "header"
        else:
            kind = {"@": "hunk", "+": "added", "-": "removed"}.get(line[:1], "same")
        rows.append((kind, line))
    return rows

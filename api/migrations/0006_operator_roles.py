"""Operator roles as groups (README, "Operators and roles"); superusers need none.

- catalog editors: handlers, offers, deals and their items and add-ons (add, change, delete,
  view), and the circuit breakers page (view);
- finance: accounts (view, and change: the grant action), the ledger and usage (view), API
  keys (view, add, change);
- support: view only, on every page, with no secret on any: configs show secrets masked and
  the admin has no page that reveals one (`manage.py config show --reveal` needs a shell and
  the key), API keys show only their display prefix, user pages only a password's summary.

A model added later joins a role by a migration of its own. Permissions are created by
`post_migrate`, after every migration has run, so this one creates them first; it can run
again (the groups end with exactly these permissions), and reversed it removes the groups.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

CRUD = ("add", "change", "delete", "view")
VIEW = ("view",)
ROLES = {
    "catalog editors": {
        "api.servicehandler": CRUD,
        "api.serviceoffer": CRUD,
        "api.servicedeal": CRUD,
        "api.servicedealitem": CRUD,
        "api.servicedealaddon": CRUD,
        "api.circuitbreaker": VIEW,
    },
    "finance": {
        "api.account": ("view", "change"),
        "api.ledgerentry": VIEW,
        "api.usagerecord": VIEW,
        "recon.usagehour": VIEW,
        "api.apikey": ("view", "add", "change"),
    },
    "support": {
        "api.servicehandler": VIEW,
        "api.serviceoffer": VIEW,
        "api.servicedeal": VIEW,
        "api.servicedealitem": VIEW,
        "api.servicedealaddon": VIEW,
        "api.circuitbreaker": VIEW,
        "api.account": VIEW,
        "api.ledgerentry": VIEW,
        "api.usagerecord": VIEW,
        "api.apikey": VIEW,
        "recon.usagehour": VIEW,
        "configs.configversion": VIEW,
        "auditlog.logentry": VIEW,
        "axes.accessattempt": VIEW,
        "axes.accesslog": VIEW,
        "axes.accessfailurelog": VIEW,
        "auth.user": VIEW,
        "auth.group": VIEW,
    },
}


def ensure_permissions(apps, using: str) -> None:
    """What post_migrate would create, now (the historical app configs have no models module,
    which create_permissions takes for "no models")."""
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0, using=using)
        app_config.models_module = None


def role_permissions(Permission, role: dict, using: str) -> list:
    wanted = {
        (model.partition(".")[0], f"{action}_{model.partition('.')[2]}")
        for model, actions in role.items()
        for action in actions
    }
    found = [
        permission
        for permission in Permission.objects.using(using).select_related("content_type")
        if (permission.content_type.app_label, permission.codename) in wanted
    ]
    missing = wanted - {(p.content_type.app_label, p.codename) for p in found}
    if missing:
        raise RuntimeError(f"operator roles: no such permissions: {sorted(missing)}")
    return found


def roles_create(apps, schema_editor):
    using = schema_editor.connection.alias
    ensure_permissions(apps, using)
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, role in ROLES.items():
        group, _ = Group.objects.using(using).get_or_create(name=name)
        group.permissions.set(role_permissions(Permission, role, using))


def roles_remove(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.using(schema_editor.connection.alias).filter(name__in=list(ROLES)).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("api", "0005_api_keys"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("configs", "0001_initial"),
        ("recon", "0001_initial"),
        ("auditlog", "0001_initial"),
        ("axes", "0008_accessfailurelog"),
    ]

    operations = [migrations.RunPython(roles_create, roles_remove)]

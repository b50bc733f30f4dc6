"""Webhooks join the operator roles (README, "Operators and roles"; api/migrations/0006):
support views deliveries, their attempts and clients' webhook settings (no page shows a
secret). Redelivering needs "change" on deliveries, which no role has: superusers only.

Permissions are created by `post_migrate`, after every migration has run, so this one creates
the webhooks app's first; it can run again, and reversed it takes them from the group.
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations

SUPPORT = "support"
VIEW = ["view_webhookdelivery", "view_webhookattempt", "view_webhooksettings"]


def _permissions(apps, using: str):
    app_config = apps.get_app_config("webhooks")
    app_config.models_module = True  # historical app configs have none: "no models" otherwise
    create_permissions(app_config, apps=apps, verbosity=0, using=using)
    app_config.models_module = None
    Permission = apps.get_model("auth", "Permission")
    return Permission.objects.using(using).filter(
        content_type__app_label="webhooks", codename__in=VIEW
    )


def support_views(apps, schema_editor):
    using = schema_editor.connection.alias
    Group = apps.get_model("auth", "Group")
    group, _ = Group.objects.using(using).get_or_create(name=SUPPORT)
    group.permissions.add(*_permissions(apps, using))


def support_views_removed(apps, schema_editor):
    using = schema_editor.connection.alias
    Group = apps.get_model("auth", "Group")
    for group in Group.objects.using(using).filter(name=SUPPORT):
        group.permissions.remove(*_permissions(apps, using))


class Migration(migrations.Migration):
    dependencies = [
        ("webhooks", "0001_initial"),
        ("api", "0006_operator_roles"),
    ]

    operations = [migrations.RunPython(support_views, support_views_removed)]

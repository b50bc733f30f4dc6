"""Operator personas (README, "Operators and roles"): staff users in the groups the migration
api/0006_operator_roles creates, and `operator`, a superuser. No passwords: tests log them in
with `force_login` (a password check costs half a second)."""

from importlib import import_module
from types import SimpleNamespace

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.db.migrations.loader import MigrationLoader

roles_migration = import_module("api.migrations.0006_operator_roles")
webhooks_roles = import_module("webhooks.migrations.0002_support_role")


def ensure_roles() -> None:
    """The groups the migration made: a transactional test's flush (the DRF-token migration
    test) empties every table, and only migrations create these rows."""
    if Group.objects.filter(name__in=list(roles_migration.ROLES)).count() == len(
        roles_migration.ROLES
    ):
        return
    state_apps = MigrationLoader(connection).project_state().apps
    editor = SimpleNamespace(connection=connection)
    roles_migration.roles_create(state_apps, editor)
    webhooks_roles.support_views(state_apps, editor)  # what support may see of webhooks


@pytest.fixture
def staff_user(django_user_model):
    ensure_roles()

    def make(username: str, group: str | None = None, **flags):
        user = django_user_model.objects.create_user(username, is_staff=True, **flags)
        if group is not None:
            user.groups.add(Group.objects.get(name=group))
        return user

    return make


@pytest.fixture
def support(staff_user):
    return staff_user("sam", "support")


@pytest.fixture
def finance(staff_user):
    return staff_user("fiona", "finance")


@pytest.fixture
def catalog_editor(staff_user):
    return staff_user("carl", "catalog editors")


@pytest.fixture
def operator(staff_user):
    return staff_user("olga", is_superuser=True)

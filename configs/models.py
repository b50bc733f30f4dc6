"""ConfigVersion: a model without a table, so that the admin lists configs and has a
permission for them ("Can view config version"). The configs themselves live in MongoDB
(configs/store.py); configs/admin.py reads them from there and never queries this model.
"""

from django.db import models


class ConfigVersion(models.Model):
    class Meta:
        managed = False  # no table: migrations record the model's state only
        default_permissions = ("view",)  # read-only: changes go through `manage.py config`
        verbose_name = "config version"
        verbose_name_plural = "config versions"

    def __str__(self) -> str:
        return f"config version {self.pk}"

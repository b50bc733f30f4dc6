"""UsageHour: a model without a table, so that the admin lists hourly usage and has a
permission for it ("Can view usage hour"). The figures live in MongoDB (recon/usage.py);
recon/admin.py reads them from there and never queries this model.
"""

from django.db import models


class UsageHour(models.Model):
    class Meta:
        managed = False  # no table: migrations record the model's state only
        default_permissions = ("view",)  # read-only: recon computes the figures
        verbose_name = "hourly usage"
        verbose_name_plural = "hourly usage"

    def __str__(self) -> str:
        return f"hourly usage {self.pk}"

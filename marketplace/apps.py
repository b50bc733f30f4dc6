"""Observability wiring that every process of the project needs once Django is set up."""

from django.apps import AppConfig
from django.db.models.signals import post_save


class ObservabilityConfig(AppConfig):
    name = "marketplace"
    label = "observability"
    verbose_name = "Observability"

    def ready(self) -> None:
        from executor import metrics
        from marketplace import prometheus

        prometheus.setup_process()
        # Every credit movement, whichever process makes it (api, executor, recon, admin).
        post_save.connect(
            metrics.ledger_entry_saved, sender="api.LedgerEntry", dispatch_uid="svc_credits"
        )

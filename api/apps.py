from django.apps import AppConfig
from django.db.models.signals import post_save

from api import config_schema
from configs import schemas
from infra.metrics import register_scrape


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "Service catalog"

    def ready(self) -> None:
        # Here, not at the top: it reads the models, which load once the app registry is ready.
        from api import metrics

        # Every credit movement, whichever process makes it (api, executor, recon, admin).
        post_save.connect(
            metrics.ledger_entry_saved, sender="api.LedgerEntry", dispatch_uid="svc_credits"
        )
        register_scrape("credits", metrics.credit_families)
        schemas.register("api", config_schema.check_api)

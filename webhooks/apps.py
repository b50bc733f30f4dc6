from django.apps import AppConfig

from infra.metrics import register_scrape


class WebhooksConfig(AppConfig):
    name = "webhooks"
    verbose_name = "Webhooks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Here, not at the top: it reads the models, which load once the app registry is ready.
        from webhooks import metrics

        register_scrape("webhooks", metrics.delivery_families)

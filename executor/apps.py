import importlib

from django.apps import AppConfig
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from configs import schemas
from executor import config_schema, metrics
from infra.metrics import register_scrape


class ExecutorConfig(AppConfig):
    name = "executor"
    verbose_name = "Executor"

    def ready(self) -> None:
        # Handlers installed outside executor/handlers register themselves on import.
        for module in settings.SVC_HANDLER_MODULES:
            try:
                importlib.import_module(module)
            except ImportError as exc:
                raise ImproperlyConfigured(
                    f"SVC_HANDLER_MODULES: cannot import {module} ({exc})"
                ) from exc
        schemas.register("service_map", config_schema.check_service_map)
        register_scrape("resources", metrics.resource_families)

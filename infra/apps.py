"""What every process of the project needs once Django is set up: its store connections and
its metrics directory."""

from django.apps import AppConfig

from infra import metrics, stores


class InfraConfig(AppConfig):
    name = "infra"
    label = "infra"
    verbose_name = "Infrastructure"

    def ready(self) -> None:
        stores.mongo_connect()
        metrics.setup_process()

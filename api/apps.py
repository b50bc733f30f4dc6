from django.apps import AppConfig


class ApiConfig(AppConfig):
    name = "api"
    verbose_name = "Service catalog"

    def ready(self) -> None:
        from api import mongo

        mongo.connect()

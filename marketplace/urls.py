from django.contrib import admin
from django.urls import include, path

from api.views import healthz
from marketplace.prometheus import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("svc/", include("api.urls")),
    path("healthz", healthz, name="healthz"),
    # Every process of the host (multiprocess mode) plus store figures: marketplace/prometheus.py.
    path("metrics", metrics_view, name="prometheus-django-metrics"),
]

handler404 = "api.errors.json_not_found"
handler500 = "api.errors.json_server_error"
handler400 = "api.errors.json_bad_request"

from django.contrib import admin
from django.urls import include, path

from api.http.views import healthz
from infra.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("svc/", include("api.http.urls")),
    path("healthz", healthz, name="healthz"),
    # Every process of the host (multiprocess mode) plus store figures: infra/metrics.py.
    path("metrics", metrics_view, name="prometheus-django-metrics"),
]

handler404 = "api.http.errors.json_not_found"
handler500 = "api.http.errors.json_server_error"
handler400 = "api.http.errors.json_bad_request"

from django.contrib import admin
from django.urls import include, path

from api.views import healthz

urlpatterns = [
    path("admin/", admin.site.urls),
    path("svc/", include("api.urls")),
    path("healthz", healthz, name="healthz"),
    path("", include("django_prometheus.urls")),  # /metrics
]

handler404 = "api.errors.json_not_found"
handler500 = "api.errors.json_server_error"
handler400 = "api.errors.json_bad_request"

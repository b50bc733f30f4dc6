from django.contrib import admin
from django.urls import include, path

from api.http.openapi import DocsView, SchemaView
from api.http.probes import livez, readyz
from api.http.views import healthz
from infra.metrics import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("svc/", include("api.http.urls")),
    # The OpenAI-compatible gateway (api/http/gateway.py).
    path("v1/", include("api.http.gateway_urls")),
    # The OpenAPI document and Swagger UI, public (api/http/openapi.py).
    path("api/schema/", SchemaView.as_view(), name="api-schema"),
    path("api/docs/", DocsView.as_view(), name="api-docs"),
    path("healthz", healthz, name="healthz"),
    path("livez", livez, name="livez"),
    path("readyz", readyz, name="readyz"),
    # Every process of the host (multiprocess mode) plus store figures: infra/metrics.py.
    path("metrics", metrics_view, name="prometheus-django-metrics"),
]

handler404 = "api.http.errors.json_not_found"
handler500 = "api.http.errors.json_server_error"
handler400 = "api.http.errors.json_bad_request"

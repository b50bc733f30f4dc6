"""The project's URLs plus the webhook endpoints, as api/http/urls.py is to route them (before
the offer intake's `<service>/<action>/`, which `account/webhook/` would otherwise match)."""

from django.urls import include, path

from api.http import webhook_views

urlpatterns = [
    path(
        "svc/account/webhook_secret/",
        webhook_views.WebhookSecretView.as_view(),
        name="account-webhook-secret",
    ),
    path(
        "svc/account/webhook/", webhook_views.WebhookSettingsView.as_view(), name="account-webhook"
    ),
    path("", include("marketplace.urls")),
]

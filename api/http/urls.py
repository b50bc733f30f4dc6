from django.urls import path

from api.http import views, webhook_views

urlpatterns = [
    path("", views.CatalogView.as_view(), name="catalog"),
    path("account/", views.AccountView.as_view(), name="account"),
    path("account/keys/", views.KeyListView.as_view(), name="account-keys"),
    path(
        "account/webhook_secret/",
        webhook_views.WebhookSecretView.as_view(),
        name="account-webhook-secret",
    ),
    path("account/webhook/", webhook_views.WebhookSettingsView.as_view(), name="account-webhook"),
    path("account/keys/<int:key_id>/", views.KeyDetailView.as_view(), name="account-key"),
    path("request/<str:request_id>/", views.RequestDetailView.as_view(), name="request-detail"),
    path(
        "request/<str:request_id>/cancel/", views.RequestCancelView.as_view(), name="request-cancel"
    ),
    path(
        "request/<str:request_id>/events/", views.RequestEventsView.as_view(), name="request-events"
    ),
    path("deal/<slug:name>/", views.DealIntakeView.as_view(), name="deal-intake"),
    path("<slug:service>/<slug:action>/", views.OfferIntakeView.as_view(), name="offer-intake"),
]

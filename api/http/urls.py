from django.urls import path

from api.http import views

urlpatterns = [
    path("", views.CatalogView.as_view(), name="catalog"),
    path("account/", views.AccountView.as_view(), name="account"),
    path("account/keys/", views.KeyListView.as_view(), name="account-keys"),
    path("account/keys/<int:key_id>/", views.KeyDetailView.as_view(), name="account-key"),
    path("request/<str:request_id>/", views.RequestDetailView.as_view(), name="request-detail"),
    path(
        "request/<str:request_id>/cancel/", views.RequestCancelView.as_view(), name="request-cancel"
    ),
    path("deal/<slug:name>/", views.DealIntakeView.as_view(), name="deal-intake"),
    path("<slug:service>/<slug:action>/", views.OfferIntakeView.as_view(), name="offer-intake"),
]

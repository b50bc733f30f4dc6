from django.urls import path

from api import views

urlpatterns = [
    path("", views.CatalogView.as_view(), name="catalog"),
    path("request/<str:request_id>/", views.RequestDetailView.as_view(), name="request-detail"),
    path("<slug:service>/<slug:action>/", views.OfferIntakeView.as_view(), name="offer-intake"),
]

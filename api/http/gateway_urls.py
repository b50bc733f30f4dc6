from django.urls import path

from api.http import gateway

urlpatterns = [
    path("models", gateway.ModelListView.as_view(), name="gateway-models"),
    path("models/<path:model>", gateway.ModelDetailView.as_view(), name="gateway-model"),
]

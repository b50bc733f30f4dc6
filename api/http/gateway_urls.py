from django.urls import path

from api.http import gateway

urlpatterns = [
    path("chat/completions", gateway.ChatCompletionsView.as_view(), name="gateway-chat"),
    path("models", gateway.ModelListView.as_view(), name="gateway-models"),
    path("models/<path:model>", gateway.ModelDetailView.as_view(), name="gateway-model"),
]

"""The app's URLs plus `/bench/bare/`: the intake's framework ceiling in the same server.

The bare view goes through the same middleware, DRF dispatch, JSON parsing and rendering as
the intake, but touches no store and authenticates nobody: what is left of an intake POST
when the application's own work is taken away.
"""

from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from marketplace.urls import handler400, handler404, handler500, urlpatterns  # noqa: F401


class BareView(APIView):
    authentication_classes = []
    permission_classes = [AllowAny]

    def post(self, request):
        return Response({"status": "queued", "inputs": request.data}, status=202)


urlpatterns = [path("bench/bare/", BareView.as_view()), *urlpatterns]

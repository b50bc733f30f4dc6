"""The API's probes, for Kubernetes and Compose (deploy/): liveness apart from readiness.

    GET /livez    200 while the process answers (no store is asked: a store down is
                  readiness's, and restarting every API process for it would help nothing)
    GET /readyz   200 when SQL, MongoDB and Redis answer; 503 `unavailable` when one does not,
                  503 `draining` once the process was told to stop (SIGTERM: api/http/hub.py),
                  so the balancer sends it nothing new while it ends what it holds

ProbeMiddleware answers them first of all, before the host is validated: a kubelet calls a pod
by its address, which is no allowed host. They tell nothing a caller could use.
"""

from django.http import JsonResponse

from api.http import hub
from api.http.views import store_checks

PATHS = ("/livez", "/readyz")


def livez(request):
    return JsonResponse({"status": "ok"})


def readyz(request):
    checks = store_checks()
    if hub.stopping():
        return JsonResponse({"status": "draining", "checks": checks}, status=503)
    healthy = all(value == "ok" for value in checks.values())
    return JsonResponse(
        {"status": "ok" if healthy else "unavailable", "checks": checks},
        status=200 if healthy else 503,
    )


class ProbeMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path == "/livez" and request.method in ("GET", "HEAD"):
            return livez(request)
        if request.path == "/readyz" and request.method in ("GET", "HEAD"):
            return readyz(request)
        return self.get_response(request)

"""Per-client intake rate, counted in the shared cache (Redis) so it holds across processes."""

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle


class IntakeThrottle(SimpleRateThrottle):
    scope = "intake"

    def get_rate(self) -> str:
        # Read at request time so the rate follows SVC_INTAKE_RATE (and test overrides).
        return settings.SVC_INTAKE_RATE

    def get_cache_key(self, request, view) -> str | None:
        if request.user is None or not request.user.is_authenticated:
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}

"""Per-client intake rate, counted in Redis so it holds across API processes.

DRF's `SimpleRateThrottle` keeps every request time of the window in one cache value that each
request reads, extends and writes back: its cost grows with the rate (at 600/min that is a
600-entry list pickled per request) and two API processes writing at once lose each other's
counts. `IntakeThrottle` keeps DRF's rate syntax (`SVC_INTAKE_RATE`, e.g. "600/min"), its
scope and its `Retry-After`, and counts with a sliding-window counter in one atomic Redis
script instead: two integers per client, one round trip per request.
"""

from functools import lru_cache

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle

from api.http.sliding_window import SLIDING_WINDOW
from configs import live
from infra.stores import redis_connection


class IntakeThrottle(SimpleRateThrottle):
    scope = "intake"
    cache_format = "svc:throttle:%(scope)s:%(ident)s"

    def get_rate(self) -> str:
        # Read at request time: the active `api` config's intake_rate, else SVC_INTAKE_RATE.
        return (live.config("api") or {}).get("intake_rate") or settings.SVC_INTAKE_RATE

    def get_cache_key(self, request, view) -> str | None:
        if request.user is None or not request.user.is_authenticated:
            return None
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}

    def allow_request(self, request, view) -> bool:
        self._wait = None
        if self.rate is None:
            return True
        key = self.get_cache_key(request, view)
        if key is None:
            return True
        allowed, wait_ms = _script()(keys=[key], args=[self.num_requests, self.duration * 1000])
        if allowed:
            return True
        self._wait = wait_ms / 1000
        return False

    def wait(self) -> float | None:
        return self._wait


def _script():
    return _registered(redis_connection())


@lru_cache(maxsize=2)
def _registered(client):
    return client.register_script(SLIDING_WINDOW)

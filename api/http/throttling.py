"""Request rates, counted in Redis so that they hold across API processes.

DRF's `SimpleRateThrottle` keeps every request time of the window in one cache value that each
request reads, extends and writes back: its cost grows with the rate (at 600/min that is a
600-entry list pickled per request) and two API processes writing at once lose each other's
counts. These throttles keep DRF's rate syntax ("600/min"), its scopes and its `Retry-After`,
and count with a sliding-window counter in one atomic Redis script instead: two integers per
subject, one round trip per request.

- `IntakeThrottle`: intake POSTs per client (`SVC_INTAKE_RATE`, or the `api` config's
  `intake_rate`);
- `KeyIntakeThrottle`: intake POSTs per API key, when the key has a `rate_per_minute`;
- `ReadThrottle`: reads and cancels per API key (`SVC_READ_RATE`);
- `AnonymousThrottle` and `unauthenticated_hit`: requests without a valid key, per client IP
  (`SVC_ANON_RATE`), so guessing keys or flooding with garbage is bounded too.
"""

from functools import lru_cache

from django.conf import settings
from rest_framework.exceptions import Throttled
from rest_framework.throttling import SimpleRateThrottle

from api.http.sliding_window import SLIDING_WINDOW
from configs import live
from infra.client_ip import client_ip
from infra.stores import redis_connection

KEY_FORMAT = "svc:throttle:%(scope)s:%(ident)s"


def take(*, scope: str, ident, rate: str) -> float | None:
    """Count one request of `ident` against `rate`; None if it fits, else seconds to wait."""
    limit, duration = SimpleRateThrottle.parse_rate(None, rate)
    key = KEY_FORMAT % {"scope": scope, "ident": ident}
    allowed, wait_ms = _script()(keys=[key], args=[limit, duration * 1000])
    return None if allowed else wait_ms / 1000


class RedisRateThrottle(SimpleRateThrottle):
    """A DRF throttle counted by `take`; subclasses name the scope, the subject and the rate."""

    def __init__(self):
        self._wait = None  # the rate is read per request (it may come from a live config)

    def subject(self, request):
        """Who is counted (None: this throttle does not apply)."""
        raise NotImplementedError

    def rate_for(self, request) -> str | None:
        raise NotImplementedError

    def allow_request(self, request, view) -> bool:
        self._wait = None
        ident = self.subject(request)
        rate = self.rate_for(request) if ident is not None else None
        if rate is None:
            return True
        self._wait = take(scope=self.scope, ident=ident, rate=rate)
        return self._wait is None

    def wait(self) -> float | None:
        return self._wait


class IntakeThrottle(RedisRateThrottle):
    scope = "intake"

    def subject(self, request):
        return request.user.pk if request.user is not None else None

    def rate_for(self, request) -> str:
        return (live.config("api") or {}).get("intake_rate") or settings.SVC_INTAKE_RATE


class KeyIntakeThrottle(RedisRateThrottle):
    scope = "key-intake"

    def subject(self, request):
        key = request.auth
        return key.pk if key is not None and key.rate_per_minute else None

    def rate_for(self, request) -> str:
        return f"{request.auth.rate_per_minute}/min"


class ReadThrottle(RedisRateThrottle):
    scope = "read"

    def subject(self, request):
        key = request.auth
        return key.pk if key is not None else None

    def rate_for(self, request) -> str:
        return settings.SVC_READ_RATE


class AnonymousThrottle(RedisRateThrottle):
    """For views open without a key (the catalog)."""

    scope = "anonymous"

    def subject(self, request):
        return client_ip(request)

    def rate_for(self, request) -> str:
        return settings.SVC_ANON_RATE


def unauthenticated_hit(request) -> None:
    """Count a request that came without a valid key against its IP; Throttled when over."""
    wait = take(
        scope=AnonymousThrottle.scope, ident=client_ip(request), rate=settings.SVC_ANON_RATE
    )
    if wait is not None:
        raise Throttled(wait=wait)


def _script():
    return _registered(redis_connection())


@lru_cache(maxsize=2)
def _registered(client):
    return client.register_script(SLIDING_WINDOW)

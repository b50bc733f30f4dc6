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

from executor.queues import redis_connection

# Sliding-window counter: the current fixed window's count plus the previous window's,
# weighted by how much of it still lies within `window` of now. Clock: the Redis server's.
# KEYS[1] key prefix; ARGV[1] limit, ARGV[2] window (ms). Returns {allowed, wait (ms)}.
_SLIDING_WINDOW = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local index = math.floor(now / window)
local elapsed = now - index * window
local current_key = KEYS[1] .. ':' .. index
local current = tonumber(redis.call('GET', current_key) or '0')
local previous = tonumber(redis.call('GET', KEYS[1] .. ':' .. (index - 1)) or '0')
local remaining = window - elapsed
if previous * remaining / window + current + 1 > limit then
  local wait = remaining
  if current + 1 <= limit and previous > 0 then
    -- the previous window's weight falls until one more request fits
    wait = remaining - (limit - current - 1) * window / previous
  end
  return {0, math.max(1, math.ceil(wait))}
end
redis.call('INCR', current_key)
redis.call('PEXPIRE', current_key, 2 * window)
return {1, 0}
"""


class IntakeThrottle(SimpleRateThrottle):
    scope = "intake"
    cache_format = "svc:throttle:%(scope)s:%(ident)s"

    def get_rate(self) -> str:
        # Read at request time so the rate follows SVC_INTAKE_RATE (and test overrides).
        return settings.SVC_INTAKE_RATE

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
    return client.register_script(_SLIDING_WINDOW)

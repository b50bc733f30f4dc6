"""The admin login's flood guard: cheap refusals (429) before any password is hashed.

A password check costs ~0.5 s of a CPU (PBKDF2). django-axes refuses a locked-out
username+address pair before hashing, but a flood that stays under its per-pair limit (many
usernames from one address, or many addresses) would still hash every attempt. So each POST
to the admin's login page first passes two checks in Redis, shared by every API process:

- a per-address rate (`SVC_ADMIN_LOGIN_RATE`, counted like the API's throttles);
- a deployment-wide cap on password checks in flight (`SVC_ADMIN_LOGIN_CONCURRENCY`): a
  small semaphore whose slots expire, so a process killed mid-check cannot leak one.

Why a middleware and not an authentication backend placed before ModelBackend: a backend can
only answer "no such user" (the admin would show "wrong password" and axes would count a
failure against the pair) where a middleware answers 429 with Retry-After; and the semaphore
must be held across the hashing, which happens in the next backend, so a backend would have to
take over ModelBackend's job to hold it. The middleware holds a slot around the login view,
which is where every password of this project is checked (the API authenticates with keys).

Redis unreachable: the guard lets the login through (and logs it), so operators can still
reach the admin during a Redis outage; axes' lockout (in SQL) still applies.

Both this guard and axes' lockout answer with the admin's login page carrying the reason, as
a 429 (`refused`).
"""

import contextlib
import logging
import math
import secrets
from functools import lru_cache

import redis
from django.conf import settings
from django.contrib import admin
from django.http import HttpResponse
from django.shortcuts import render

from api.http import throttling
from infra.client_ip import client_ip
from infra.stores import redis_connection

log = logging.getLogger(__name__)

TEMPLATE = "admin/login_refused.html"
# Redis key of the password-check slots (the per-address counters are the API throttles').
SLOTS_KEY = "svc:admin-login:slots"
# Milliseconds a password-check slot is held at most: a login takes well under a second, and a
# process killed while holding one frees it by this expiry.
SLOT_TTL_MS = 10_000
# Seconds a login refused for lack of a free slot is told to wait.
SLOT_RETRY_AFTER = 2

# Take a slot: drop expired holders, then add this one if fewer than ARGV[1] hold one.
# KEYS[1] the slots (a sorted set of tokens by expiry, ms); ARGV[2] TTL (ms), ARGV[3] token.
ACQUIRE_SLOT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


class LoginGuardMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        try:
            return self.get_response(request)
        finally:
            slot_release(getattr(request, "_svc_login_slot", None))

    def process_view(self, request, view_func, view_args, view_kwargs):
        """Runs once the URL is resolved, before the login view (where the hashing is)."""
        if request.method != "POST" or request.resolver_match.view_name != "admin:login":
            return None
        try:
            wait = rate_wait(client_ip(request))
            if wait is not None:
                message = "Too many login attempts from your address."
                return refused(request, message, retry_after=wait)
            request._svc_login_slot = slot_acquire()
        except redis.RedisError as exc:
            log.warning("admin login guard skipped: %s", type(exc).__name__)
            return None
        if request._svc_login_slot is None:
            message = "Too many logins are being checked right now."
            return refused(request, message, retry_after=SLOT_RETRY_AFTER)
        return None


def rate_wait(address: str) -> float | None:
    """Count one login attempt from `address`; None if it fits the rate, else seconds to wait."""
    return throttling.take(scope="admin-login", ident=address, rate=settings.SVC_ADMIN_LOGIN_RATE)


def slot_acquire() -> str | None:
    """A token holding one of the password-check slots, or None when all are taken."""
    token = secrets.token_hex(8)
    args = [settings.SVC_ADMIN_LOGIN_CONCURRENCY, SLOT_TTL_MS, token]
    return token if _script(ACQUIRE_SLOT)(keys=[SLOTS_KEY], args=args) else None


def slot_release(token: str | None) -> None:
    if token is None:
        return
    with contextlib.suppress(redis.RedisError):  # else the slot expires (SLOT_TTL_MS)
        redis_connection().zrem(SLOTS_KEY, token)


def refused(request, message: str, *, retry_after: float) -> HttpResponse:
    """The admin's login page with the reason a login was refused unchecked, as a 429 (rendered
    here: axes returns it from its middleware, after Django renders template responses)."""
    seconds = max(1, math.ceil(retry_after))
    context = {
        "site_header": admin.site.site_header,
        "site_title": admin.site.site_title,
        "title": "Log in",
        "message": message,
        "retry_in": f"{seconds} seconds" if seconds < 120 else f"{math.ceil(seconds / 60)} minutes",
    }
    response = render(request, TEMPLATE, context, status=429)
    response["Retry-After"] = str(seconds)
    return response


def lockout_response(request, original_response=None, credentials=None):
    """django-axes' AXES_LOCKOUT_CALLABLE: a locked-out username+address pair's answer."""
    minutes = settings.SVC_ADMIN_LOGIN_LOCKOUT_MINUTES
    message = "Too many failed logins for this username from your address: it is locked."
    return refused(request, message, retry_after=minutes * 60)


@lru_cache(maxsize=4)
def _script(source: str):
    return redis_connection().register_script(source)

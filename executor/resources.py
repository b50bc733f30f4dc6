"""Shared resource limits: concurrency slots and credit budgets, exact across executor processes.

Every limit lives in Redis and changes only inside the Lua scripts below, so a check and
the write it allows are one atomic step, and every clock reading is the Redis server's
`TIME` (executor hosts may disagree about the time; the server is the one referee).

    leases   svc:res:<name>:leases                ZSET, one member per slot, score = expiry (ms)
    budget   svc:res:<name>:budget:<window start> STRING, credits spent in that UTC window
    released svc:res:<name>:released              ZSET, released budgeted grants (no double refund)

A slot is a lease that lives `lease_ttl` seconds unless renewed, so a killed worker's slot
comes back by itself. The map of resources is the active `service_map` config's, else
`configs/resource_map.yaml` (or the file named by SVC_RESOURCE_MAP, which wins over both).
"""

import asyncio
import contextlib
import logging
import math
import random
import re
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import redis
import yaml
from django.conf import settings

from configs import live
from executor import defaults
from infra.stores import redis_connection

logger = logging.getLogger(__name__)

# The resource map shipped with the code, used when SVC_RESOURCE_MAP is not set.
DEFAULT_RESOURCE_MAP = Path(__file__).resolve().parent.parent / "configs" / "resource_map.yaml"
# Length of each budget period; windows are aligned to the UTC epoch (whole minutes, hours,
# days). "second" is for tests and very tight limits.
PERIOD_SECONDS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
# What the executor does with a request whose resource is saturated or exhausted.
POLICIES = ("wait", "fail")
# Every Redis key of this module starts with this.
KEY_PREFIX = "svc:res:"

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
# Retries and the circuit breaker of the resource's calls (executor/resilience.py, breaker.py);
# absent keys take those modules' defaults.
_RESILIENCE_SETTINGS = (
    "max_retries",
    "retry_backoff",
    "retry_backoff_max",
    "breaker_threshold",
    "breaker_cooldown",
    "breaker_policy",
)
_SETTINGS = ("max_concurrency", "budget", "period", "policy", "lease_ttl", *_RESILIENCE_SETTINGS)
_SECONDS = ("lease_ttl", "retry_backoff", "retry_backoff_max", "breaker_cooldown")
_POSITIVE_OR_NULL = "must be a positive integer or null"
_CHOICES = {"period": tuple(PERIOD_SECONDS), "policy": POLICIES, "breaker_policy": POLICIES}


class ResourceMapError(Exception):
    """The resource map file is missing or invalid; the message names the resource and key."""


@dataclass(frozen=True)
class Resource:
    name: str
    max_concurrency: int | None = None
    budget: int | None = None
    period: str = "minute"
    policy: str = "wait"
    lease_ttl: float = 30.0
    max_retries: int | None = None
    retry_backoff: float | None = None
    retry_backoff_max: float | None = None
    breaker_threshold: int | None = None
    breaker_cooldown: float | None = None
    # While the breaker is open and the request has no fallback: fail it at once
    # (`upstream_unavailable`) or wait (the request stays queued until the cool-down ends).
    breaker_policy: str = "fail"


@dataclass(frozen=True)
class Grant:
    """What acquire() took: `slots` leases under one id and `credits` from window `period_key`."""

    resource: str
    lease_id: str
    slots: int
    credits: int
    period_key: str | None


@dataclass(frozen=True)
class Denied:
    """Why acquire() took nothing ("saturated" | "exhausted") and when to try again."""

    resource: str
    reason: str
    retry_after: float


# ---------------------------------------------------------------------------------------------
# The resource map


_cache: dict[Path, tuple[int, dict[str, Resource]]] = {}
# The active service_map config's resource map, parsed: (the content it was parsed from, map).
_config_cache: tuple[object, dict[str, Resource]] | None = None


def load_resource_map(path: str | Path | None = None) -> dict[str, Resource]:
    """Resources by name from `path`, else the SVC_RESOURCE_MAP file, else the `resource_map` of the
    active `service_map` config (configs/live.py: a new version applies within seconds,
    without a restart), else the shipped map.

    A file is parsed again only when its mtime changes, a config when its version changes.
    """
    if path is None and not settings.SVC_RESOURCE_MAP:
        configured = _from_config()
        if configured is not None:
            return dict(configured)
    path = Path(path or settings.SVC_RESOURCE_MAP or DEFAULT_RESOURCE_MAP)
    try:
        mtime = path.stat().st_mtime_ns
    except OSError as exc:
        raise ResourceMapError(f"{path}: cannot read the resource map ({exc.strerror})") from None
    cached = _cache.get(path)
    if cached is None or cached[0] != mtime:
        cached = _cache[path] = (mtime, _parse_map(path))
    return dict(cached[1])


def _from_config() -> dict[str, Resource] | None:
    global _config_cache
    document = (live.config("service_map") or {}).get("resource_map")
    if not document:
        return None
    cached = _config_cache
    if cached is None or cached[0] is not document:
        try:
            cached = _config_cache = (document, parse_resource_map(document, source="resource_map"))
        except ResourceMapError as exc:  # validated at upload; keep the last good map
            logger.warning("service_map config: %s; keeping the last good resource map", exc)
            return cached[1] if cached else None
    return cached[1]


def get_resource(name: str) -> Resource:
    """The named resource from the map; a resource the map does not list is unlimited."""
    return load_resource_map().get(name) or Resource(name)


def queue_name(resource_name: str) -> str:
    """The RQ queue of the requests that use this resource (each resource has its own)."""
    return f"svc-{resource_name}"


def _parse_map(path: Path) -> dict[str, Resource]:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ResourceMapError(f"{path}: not a readable YAML file: {' '.join(str(exc).split())}")
    return parse_resource_map(document, source=str(path))


def parse_resource_map(document, *, source: str) -> dict[str, Resource]:
    """Resources by name from a resource map ({resources: {name: settings}}): the shipped file,
    another file, or the `resource_map` of a `service_map` config. Raises ResourceMapError
    naming `source`, the resource and the key at fault."""
    if not isinstance(document, dict) or list(document) != ["resources"]:
        raise ResourceMapError(f"{source}: expected a mapping with the one key `resources`")
    entries = document["resources"]
    if not isinstance(entries, dict):
        raise ResourceMapError(f"{source}: `resources` must be a mapping of name to settings")
    return {name: _parse_resource(source, name, given) for name, given in entries.items()}


def _parse_resource(source: str, name, given) -> Resource:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ResourceMapError(f"{source}: resource name {name!r} must be letters, digits, . _ -")
    where = f"{source}: resource {name!r}"
    if not isinstance(given, dict):
        raise ResourceMapError(f"{where}: expected a mapping of settings, got {given!r}")
    for key, value in given.items():
        problem = _setting_problem(key, value)
        if problem:
            raise ResourceMapError(f"{where}: {key} {problem}, got {value!r}")
    seconds = {key: float(given[key]) for key in _SECONDS if key in given}
    return Resource(name, **{**given, **seconds})


def _setting_problem(key, value) -> str | None:
    """Why `value` is not valid for the setting `key`, or None if it is."""
    if key in ("max_concurrency", "budget"):
        return None if value is None or _is_positive(value, int) else _POSITIVE_OR_NULL
    if key in _SECONDS:
        return None if _is_positive(value, (int, float)) else "must be a positive number of seconds"
    if key == "breaker_threshold":
        return None if _is_positive(value, int) else "must be a positive integer"
    if key == "max_retries":
        valid = isinstance(value, int) and not isinstance(value, bool)
        if valid and 0 <= value <= defaults.MAX_RETRIES_LIMIT:
            return None
        return f"must be an integer from 0 to {defaults.MAX_RETRIES_LIMIT}"
    if key in _CHOICES:
        if isinstance(value, str) and value in _CHOICES[key]:
            return None
        return f"must be one of {', '.join(_CHOICES[key])}"
    return f"is not a known key (known: {', '.join(_SETTINGS)})"


def _is_positive(value, types) -> bool:
    if isinstance(value, bool) or not isinstance(value, types):
        return False
    return math.isfinite(value) and value > 0


# ---------------------------------------------------------------------------------------------
# Lua scripts (each one atomic; all read the server clock)

# KEYS: leases. ARGV: budget key prefix, slots, credits, max_concurrency (-1 = unlimited),
# budget (-1 = unlimited), period seconds, lease ttl ms, lease id, budget key grace seconds.
# Returns {1, budget window key or nil} or {0, reason, retry after ms}; a denial writes nothing
# but the removal of expired leases.
ACQUIRE_LUA = """
redis.replicate_commands()
local leases = KEYS[1]
local slots, credits = tonumber(ARGV[2]), tonumber(ARGV[3])
local max_concurrency, budget = tonumber(ARGV[4]), tonumber(ARGV[5])
local period, ttl_ms, lease_id = tonumber(ARGV[6]), tonumber(ARGV[7]), ARGV[8]
local time = redis.call('TIME')
local now_s = tonumber(time[1])
local now_ms = now_s * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now_ms)
local window_key, window_end = false, 0
if budget >= 0 and credits > 0 then
  local window_start = now_s - now_s % period
  window_end = window_start + period
  window_key = ARGV[1] .. window_start
  if tonumber(redis.call('GET', window_key) or '0') + credits > budget then
    return {0, 'exhausted', window_end * 1000 - now_ms}
  end
end
if max_concurrency >= 0 and redis.call('ZCARD', leases) + slots > max_concurrency then
  local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
  local wait = ttl_ms
  if first[2] then wait = math.min(tonumber(first[2]) - now_ms, ttl_ms) end
  return {0, 'saturated', wait}
end
for i = 0, slots - 1 do
  redis.call('ZADD', leases, now_ms + ttl_ms, lease_id .. ':' .. i)
end
if window_key then
  redis.call('INCRBY', window_key, credits)
  redis.call('EXPIREAT', window_key, window_end + tonumber(ARGV[9]))
end
return {1, window_key}
"""

# KEYS: leases. ARGV: lease id, slots, lease ttl ms. Returns 1 if every slot was still leased
# (and now expires a ttl from now), else 0 and the lease is gone entirely.
RENEW_LUA = """
redis.replicate_commands()
local leases, lease_id = KEYS[1], ARGV[1]
local slots, ttl_ms = tonumber(ARGV[2]), tonumber(ARGV[3])
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now_ms)
for i = 0, slots - 1 do
  if not redis.call('ZSCORE', leases, lease_id .. ':' .. i) then
    for j = 0, slots - 1 do redis.call('ZREM', leases, lease_id .. ':' .. j) end
    return 0
  end
end
for i = 0, slots - 1 do
  redis.call('ZADD', leases, 'XX', now_ms + ttl_ms, lease_id .. ':' .. i)
end
return 1
"""

# KEYS: leases, released. ARGV: lease id, slots, credits, budget window key ('' = none),
# refund ('1' | '0'). Frees the slots; the first release of a budgeted grant is remembered
# for as long as its window key lives, and only that first one may refund. Returns the
# credits refunded.
RELEASE_LUA = """
redis.replicate_commands()
local leases, released = KEYS[1], KEYS[2]
local lease_id, slots, credits = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local window_key = ARGV[4]
for i = 0, slots - 1 do redis.call('ZREM', leases, lease_id .. ':' .. i) end
if credits <= 0 or window_key == '' then return 0 end
local window_ttl = redis.call('PTTL', window_key)
if window_ttl <= 0 then return 0 end
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', released, '-inf', now_ms)
if redis.call('ZADD', released, 'NX', now_ms + window_ttl, lease_id) == 0 then return 0 end
if redis.call('PTTL', released) < window_ttl then redis.call('PEXPIRE', released, window_ttl) end
if ARGV[5] ~= '1' then return 0 end
local refund = math.min(credits, tonumber(redis.call('GET', window_key) or '0'))
redis.call('DECRBY', window_key, refund)
return refund
"""

# KEYS: leases. ARGV: budget key prefix, period seconds. Read only.
# Returns {live leases, credits used in the current window, window end epoch seconds}.
SNAPSHOT_LUA = """
local time = redis.call('TIME')
local now_s = tonumber(time[1])
local now_ms = now_s * 1000 + math.floor(tonumber(time[2]) / 1000)
local window_start = now_s - now_s % tonumber(ARGV[2])
local used = tonumber(redis.call('GET', ARGV[1] .. window_start) or '0')
local inflight = redis.call('ZCOUNT', KEYS[1], '(' .. now_ms, '+inf')
return {inflight, used, window_start + tonumber(ARGV[2])}
"""


# ---------------------------------------------------------------------------------------------
# Accounting


def acquire(
    resource: Resource, *, slots: int, credits: int, owner: str, connection=None
) -> Grant | Denied:
    """Take `slots` concurrency slots and `credits` of the budget, both or neither.

    `owner` (e.g. a request id) prefixes the lease id, to tell in Redis whose lease it is.
    Raises ValueError for a request that could never be granted (more slots than
    max_concurrency, more credits than the whole budget): the caller caps it.
    """
    _check_request(resource, slots, credits)
    lease_id = f"{owner}/{uuid.uuid4().hex}"
    result = _script(connection, ACQUIRE_LUA)(
        keys=[_key(resource.name, "leases")],
        args=[
            _key(resource.name, "budget:"),
            slots,
            credits,
            -1 if resource.max_concurrency is None else resource.max_concurrency,
            -1 if resource.budget is None else resource.budget,
            PERIOD_SECONDS[resource.period],
            _ms(resource.lease_ttl),
            lease_id,
            defaults.BUDGET_KEY_GRACE,
        ],
    )
    if result[0] == 1:
        period_key = _text(result[1]) if result[1] else None
        return Grant(resource.name, lease_id, slots, credits if period_key else 0, period_key)
    reason, retry_ms = _text(result[1]), max(int(result[2]), 0)
    retry_after = retry_ms / 1000
    if reason == "saturated":
        retry_after = min(retry_after, defaults.SATURATED_RETRY_MAX)
    return Denied(resource.name, reason, retry_after)


def slots_for(resource: Resource, calls: int) -> int:
    """Slots a request of `calls` handler calls takes: one per call, at most all there are."""
    return min(calls, resource.max_concurrency or calls)


def acquire_waiting(
    resource: Resource, *, calls: int, credits_per_call: int, owner: str, wait: float
) -> Grant | Denied:
    """acquire() the slots and credits of `calls` calls, looking again for up to `wait` seconds
    while the resource is saturated (slots free up in milliseconds), with a jittered pause
    that doubles; never while its budget is exhausted (that takes a period). Blocks: call it
    from a job's thread or through asyncio.to_thread."""
    slots, credits = slots_for(resource, calls), credits_per_call * calls
    deadline = time.monotonic() + wait
    pause = defaults.SATURATED_POLL_FIRST
    while True:
        grant = acquire(resource, slots=slots, credits=credits, owner=owner)
        if not isinstance(grant, Denied) or grant.reason != "saturated":
            return grant
        if time.monotonic() + pause > deadline:
            return grant
        time.sleep(random.uniform(pause / 2, pause))
        pause = min(pause * 2, defaults.SATURATED_POLL_MAX)


def renew(grant: Grant, resource: Resource, connection=None) -> bool:
    """Extend the grant's lease to lease_ttl from now; False if it had already expired."""
    renewed = _script(connection, RENEW_LUA)(
        keys=[_key(grant.resource, "leases")],
        args=[grant.lease_id, grant.slots, _ms(resource.lease_ttl)],
    )
    return renewed == 1


def release(grant: Grant, *, refund: bool = False, connection=None) -> None:
    """Free the grant's slots; refund=True also returns its credits (the call was never made).

    Idempotent: releasing again frees nothing more and never refunds twice. With Redis away
    it logs and returns: the lease expires by itself within `lease_ttl` (a refund is lost).
    """
    try:
        _script(connection, RELEASE_LUA)(
            keys=[_key(grant.resource, "leases"), _key(grant.resource, "released")],
            args=[grant.lease_id, grant.slots, grant.credits, grant.period_key or "", int(refund)],
        )
    except redis.RedisError as exc:
        logger.warning(
            "lease not released resource=%s lease=%s (%s): it expires by itself",
            grant.resource,
            grant.lease_id,
            exc,
        )


@contextlib.asynccontextmanager
async def leased(grant: Grant, resource: Resource, *, connection=None):
    """Hold the grant while the body runs: renew it in the background, release it on exit."""
    renewing = asyncio.get_running_loop().create_task(_keep_renewed(grant, resource, connection))
    try:
        yield grant
    finally:
        renewing.cancel()
        # Called, not awaited: the release must happen even while this task is being cancelled.
        release(grant, connection=connection)


def snapshot(resource: Resource, connection=None) -> dict:
    """Current use of the resource for the admin and metrics (window_ends_at: epoch seconds)."""
    inflight, used, window_end = _script(connection, SNAPSHOT_LUA)(
        keys=[_key(resource.name, "leases")],
        args=[_key(resource.name, "budget:"), PERIOD_SECONDS[resource.period]],
    )
    budgeted = resource.budget is not None
    return {
        "resource": resource.name,
        "inflight": inflight,
        "max_concurrency": resource.max_concurrency,
        "budget": resource.budget,
        "budget_used": used if budgeted else None,
        "period": resource.period,
        "window_ends_at": window_end if budgeted else None,
    }


async def _keep_renewed(grant: Grant, resource: Resource, connection) -> None:
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(resource.lease_ttl / defaults.RENEWALS_PER_TTL)
        try:
            alive = await loop.run_in_executor(_renew_pool, renew, grant, resource, connection)
        except redis.RedisError as exc:
            logger.warning("lease renewal failed lease=%s: %s", grant.lease_id, exc)
            continue
        if not alive:
            logger.warning(
                "lease expired before renewal resource=%s lease=%s", grant.resource, grant.lease_id
            )
            return


# Threads start on first use, so importing the module costs nothing.
_renew_pool = ThreadPoolExecutor(defaults.RENEW_THREADS, thread_name_prefix="lease-renew")


def _check_request(resource: Resource, slots: int, credits: int) -> None:
    if resource.period not in PERIOD_SECONDS:
        raise ValueError(f"resource {resource.name}: unknown period {resource.period!r}")
    if slots < 1:
        raise ValueError(f"resource {resource.name}: slots must be at least 1, got {slots}")
    limit = resource.max_concurrency
    if limit is not None and slots > limit:
        raise ValueError(f"resource {resource.name}: {slots} slots exceed max_concurrency {limit}")
    if credits < 0 or (resource.budget is not None and credits > resource.budget):
        raise ValueError(
            f"resource {resource.name}: credits {credits} outside 0..{resource.budget}"
        )


def _script(connection, source: str):
    if connection is None:
        connection = redis_connection()
    return connection.register_script(source)


def _key(resource_name: str, part: str) -> str:
    return f"{KEY_PREFIX}{resource_name}:{part}"


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

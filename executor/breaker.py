"""Circuit breakers: one per resource, shared by every executor process (state in Redis).

    svc:breaker:<resource>  HASH  state (closed | open | half_open), failures (consecutive
                                  retryable failures), open_until (ms), trial (owner of the
                                  trial call), trial_until (ms), opened_at (ms), opens (count)

closed     calls go through; each retryable failure (timeout, connection error, 429, 5xx)
           adds one to `failures`, a success resets it; `threshold` in a row open it.
open       calls are refused (the executor falls back, fails with `upstream_unavailable`, or
           defers the request, by the resource's `breaker_policy`) until `cooldown` passed.
half_open  the first call after the cool-down is the one trial; others are refused while it
           runs. Its success closes the breaker, its failure opens it for another cool-down.
           A trial whose process died is handed to the next caller after `trial_ttl`.

Each step is one Lua script reading the Redis server's clock, so two processes never both
take the trial and a count is never lost. A process that found a breaker closed with no
failure trusts that for BREAKER_CLOSED_TRUST_SECONDS (executor/defaults.py) without asking
again (at hundreds of calls a second the read was a Lua call and a thread hop each); its
own failures end the trust at
once, so only another process's failures reach it that much later. Outcomes of calls that
were let through before the breaker opened do not move an open breaker (only the trial's
does). Settings come from the resource map entry: `breaker_threshold` (default 5),
`breaker_cooldown` (seconds, 30).
"""

import logging
import time
from dataclasses import dataclass

import redis

from executor import defaults, metrics
from infra.stores import redis_connection

logger = logging.getLogger(__name__)

# Every Redis key of this module starts with this.
KEY_PREFIX = "svc:breaker:"
CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# Gauge values of svc_breaker_state.
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}

# KEYS: breaker. ARGV: owner, trial ttl ms. Returns {decision, failures, retry after ms}:
# decision "closed" (go), "trial" (go: you are the trial) or "open" (refused).
ALLOW_LUA = """
redis.replicate_commands()
local key = KEYS[1]
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local state = redis.call('HGET', key, 'state') or 'closed'
local failures = tonumber(redis.call('HGET', key, 'failures') or '0')
if state == 'closed' then return {'closed', failures, 0} end
if state == 'open' then
  local open_until = tonumber(redis.call('HGET', key, 'open_until') or '0')
  if now_ms < open_until then return {'open', failures, open_until - now_ms} end
else
  local trial_until = tonumber(redis.call('HGET', key, 'trial_until') or '0')
  if now_ms < trial_until then return {'open', failures, trial_until - now_ms} end
end
redis.call('HSET', key, 'state', 'half_open', 'trial', ARGV[1],
           'trial_until', now_ms + tonumber(ARGV[2]))
return {'trial', failures, 0}
"""

# KEYS: breaker. ARGV: outcome (success | failure | neutral), owner, threshold, cooldown ms.
# Returns the state after the outcome. `neutral` (a trial that ended without telling anything
# about the upstream, e.g. bad params) hands the trial to the next caller at once.
RECORD_LUA = """
redis.replicate_commands()
local key, outcome, owner = KEYS[1], ARGV[1], ARGV[2]
local threshold, cooldown_ms = tonumber(ARGV[3]), tonumber(ARGV[4])
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local state = redis.call('HGET', key, 'state') or 'closed'
local is_trial = state == 'half_open' and redis.call('HGET', key, 'trial') == owner
local function open()
  redis.call('HSET', key, 'state', 'open', 'open_until', now_ms + cooldown_ms,
             'opened_at', now_ms)
  redis.call('HDEL', key, 'trial', 'trial_until')
  redis.call('HINCRBY', key, 'opens', 1)
  return 'open'
end
if outcome == 'success' then
  if state == 'closed' or is_trial then
    redis.call('HSET', key, 'state', 'closed', 'failures', 0)
    redis.call('HDEL', key, 'trial', 'trial_until', 'open_until')
    return 'closed'
  end
  return state
end
if outcome == 'neutral' then
  if is_trial then
    redis.call('HSET', key, 'state', 'open', 'open_until', now_ms)
    redis.call('HDEL', key, 'trial', 'trial_until')
    return 'open'
  end
  return state
end
local failures = redis.call('HINCRBY', key, 'failures', 1)
if is_trial then return open() end
if state == 'closed' and failures >= threshold then return open() end
return state
"""

# KEYS: breaker. Read only. Returns {state, failures, open_until, opened_at, opens,
# trial_until, now ms}.
SNAPSHOT_LUA = """
local time = redis.call('TIME')
local now_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local v = redis.call('HMGET', KEYS[1], 'state', 'failures', 'open_until', 'opened_at', 'opens',
                     'trial_until')
return {v[1] or 'closed', v[2] or '0', v[3] or '0', v[4] or '0', v[5] or '0', v[6] or '0',
        now_ms}
"""


@dataclass(frozen=True)
class Gate:
    """allow()'s answer: `decision` closed | trial | open; `failures` so far; `retry_after`
    seconds until a call may be let through again (open only)."""

    resource: str
    decision: str
    failures: int = 0
    retry_after: float = 0.0

    @property
    def allowed(self) -> bool:
        return self.decision != OPEN


def threshold_of(resource) -> int:
    return getattr(resource, "breaker_threshold", None) or defaults.BREAKER_THRESHOLD


def cooldown_of(resource) -> float:
    return getattr(resource, "breaker_cooldown", None) or defaults.BREAKER_COOLDOWN


# Resource name → time.monotonic() until which this process trusts its breaker closed.
_trusted: dict[str, float] = {}


def trusted(resource) -> Gate | None:
    """A closed gate while this process trusts the resource's breaker closed (see the module
    doc), else None: ask allow()."""
    until = _trusted.get(resource.name)
    if until is not None and time.monotonic() < until:
        return Gate(resource.name, CLOSED)
    return None


def allow(resource, *, owner: str, trial_ttl: float, connection=None) -> Gate:
    """Whether a call may go to the resource now; may make `owner` the half-open trial, which
    is handed on after `trial_ttl` seconds if its outcome is never recorded."""
    if connection is None and (gate := trusted(resource)) is not None:
        return gate
    try:
        decision, failures, retry_ms = _script(connection, ALLOW_LUA)(
            keys=[_key(resource.name)], args=[owner, max(1, round(trial_ttl * 1000))]
        )
    except redis.RedisError as exc:
        # Fail open: Redis away (a restart) says nothing about the upstream; the calls go on.
        logger.warning("circuit breaker unreadable resource=%s (%s): calling", resource.name, exc)
        return Gate(resource.name, CLOSED)
    decision = _text(decision)
    gate = Gate(resource.name, decision, int(failures), max(int(retry_ms), 0) / 1000)
    if connection is None and decision == CLOSED and not gate.failures:
        _trusted[resource.name] = time.monotonic() + defaults.BREAKER_CLOSED_TRUST_SECONDS
    _export(resource.name, HALF_OPEN if decision == "trial" else decision)
    return gate


def record(resource, *, outcome: str, owner: str, connection=None) -> str:
    """Record a call's outcome: "failure" (retryable), "success", or "neutral" (a trial that
    proved nothing); returns the breaker's state after it."""
    if outcome != "success":
        _trusted.pop(resource.name, None)
    try:
        state = _text(
            _script(connection, RECORD_LUA)(
                keys=[_key(resource.name)],
                args=[
                    outcome,
                    owner,
                    threshold_of(resource),
                    max(1, round(cooldown_of(resource) * 1000)),
                ],
            )
        )
    except redis.RedisError as exc:  # one outcome not counted: the next ones are
        logger.warning("circuit breaker not updated resource=%s (%s)", resource.name, exc)
        return CLOSED
    _export(resource.name, state)
    if state == OPEN and outcome == "failure":
        logger.warning("circuit breaker open resource=%s", resource.name)
    return state


def snapshot(resource, connection=None) -> dict:
    """The breaker's state for the admin: state, failures, opened_at (epoch seconds or None),
    retry_after (seconds until a call may go: the rest of the cool-down, or of a running
    trial), opens (times opened)."""
    values = _script(connection, SNAPSHOT_LUA)(keys=[_key(resource.name)])
    state, failures, open_until, opened_at, opens, trial_until, now_ms = values
    state, opened_at, now_ms = _text(state), int(opened_at), int(now_ms)
    until = int(open_until) if state == OPEN else int(trial_until) if state == HALF_OPEN else 0
    _export(resource.name, state)
    return {
        "resource": resource.name,
        "state": state,
        "failures": int(failures),
        "threshold": threshold_of(resource),
        "cooldown": cooldown_of(resource),
        "opened_at": opened_at / 1000 if opened_at else None,
        "retry_after": max(until - now_ms, 0) / 1000,
        "opens": int(opens),
    }


def wait_while_open(resource, connection=None) -> float:
    """Seconds until an open breaker lets a call through (0 when closed, or when its trial is
    free to take): a read, so a deferring request never takes the trial it is not running."""
    return snapshot(resource, connection)["retry_after"]


def reset(resource_name: str, connection=None) -> None:
    """Close a breaker by hand (an operator after fixing the upstream; tests)."""
    _connection(connection).delete(_key(resource_name))
    forget()
    _export(resource_name, CLOSED)


def forget() -> None:
    """Trust no breaker until Redis is asked again (tests that reset Redis)."""
    _trusted.clear()


def _export(resource_name: str, state: str) -> None:
    metrics.BREAKER_STATE.labels(resource=resource_name).set(STATE_VALUES[state])


def _connection(connection):
    if connection is None:
        connection = redis_connection()
    return connection


def _script(connection, source: str):
    return _connection(connection).register_script(source)


def _key(resource_name: str) -> str:
    return f"{KEY_PREFIX}{resource_name}"


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)

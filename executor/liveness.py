"""Which executor processes are alive, for recon: each beats into one Redis sorted set.

    svc:executors   ZSET, member = RQ worker name, score = last beat (epoch seconds)

A ConcurrentWorker beats every beat_seconds() from a thread of its own (so a busy job loop
never delays it) and leaves the set when it stops. One that has not beaten for dead_after()
seconds is dead: `kill -9`, a lost host, a frozen process. RQ's own worker keys live for
`worker_ttl` (minutes), too long for recon's "retried within 2 minutes".
"""

import time

import redis
from django.conf import settings

from executor import defaults

EXECUTORS_KEY = "svc:executors"


def dead_after() -> float:
    """Seconds without a beat after which an executor counts as dead (SVC_EXECUTOR_DEAD_AFTER:
    the executors and recon must agree on it)."""
    return settings.SVC_EXECUTOR_DEAD_AFTER


def beat_seconds() -> float:
    """Seconds between two beats of a live executor."""
    return dead_after() / defaults.BEATS_PER_DEAD_AFTER


def beat(connection: redis.Redis, name: str) -> None:
    connection.zadd(EXECUTORS_KEY, {name: time.time()})


def leave(connection: redis.Redis, name: str) -> None:
    connection.zrem(EXECUTORS_KEY, name)


def live(connection: redis.Redis) -> set[str]:
    """Names of the executors that beat within dead_after() seconds (the dead are dropped)."""
    cutoff = time.time() - dead_after()
    with connection.pipeline() as pipe:
        pipe.zremrangebyscore(EXECUTORS_KEY, "-inf", cutoff)
        pipe.zrangebyscore(EXECUTORS_KEY, cutoff, "+inf")
        _, names = pipe.execute()
    return {name.decode() if isinstance(name, bytes) else name for name in names}

"""Which executor processes are alive, for recon: each beats into one Redis sorted set.

    svc:executors   ZSET, member = RQ worker name, score = last beat (epoch seconds)

A ConcurrentWorker beats every BEAT_SECONDS from a thread of its own (so a busy job loop
never delays it) and leaves the set when it stops. One that has not beaten for DEAD_AFTER
seconds is dead: `kill -9`, a lost host, a frozen process. RQ's own worker keys live for
`worker_ttl` (minutes), too long for recon's "retried within 2 minutes". No Django here.
"""

import time

import redis

EXECUTORS_KEY = "svc:executors"
# Seconds between two beats of a live executor.
BEAT_SECONDS = 5.0
# Seconds without a beat after which an executor counts as dead.
DEAD_AFTER = 20.0


def beat(connection: redis.Redis, name: str) -> None:
    connection.zadd(EXECUTORS_KEY, {name: time.time()})


def leave(connection: redis.Redis, name: str) -> None:
    connection.zrem(EXECUTORS_KEY, name)


def live(connection: redis.Redis) -> set[str]:
    """Names of the executors that beat within DEAD_AFTER seconds (the dead are dropped)."""
    cutoff = time.time() - DEAD_AFTER
    with connection.pipeline() as pipe:
        pipe.zremrangebyscore(EXECUTORS_KEY, "-inf", cutoff)
        pipe.zrangebyscore(EXECUTORS_KEY, cutoff, "+inf")
        _, names = pipe.execute()
    return {name.decode() if isinstance(name, bytes) else name for name in names}

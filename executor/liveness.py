"""Which executor processes are alive, for recon: each beats into one Redis sorted set.

    svc:executors   ZSET, member = RQ worker name, score = last beat (epoch seconds)

A ConcurrentWorker beats every BEAT_SECONDS from a thread of its own (so a busy job loop
never delays it) and leaves the set when it stops. One that has not beaten for DEAD_AFTER
seconds is dead: `kill -9`, a lost host, a frozen process. RQ's own worker keys live for
`worker_ttl` (minutes), too long for recon's "retried within 2 minutes". No Django settings
here (marketplace.envs reads the environment).
"""

import time

import redis

from marketplace.envs import envint

EXECUTORS_KEY = "svc:executors"
# Seconds without a beat after which an executor counts as dead (SVC_EXECUTOR_DEAD_AFTER; the
# executors and recon must agree on it). Lower means faster recovery and more false deaths of
# a process frozen for a moment (a long GC pause, a swapped-out host).
DEAD_AFTER = float(max(envint("SVC_EXECUTOR_DEAD_AFTER", 20), 2))
# Seconds between two beats of a live executor: four beats per DEAD_AFTER.
BEAT_SECONDS = DEAD_AFTER / 4


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

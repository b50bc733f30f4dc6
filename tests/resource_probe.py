"""A separate OS process for tests/system/test_executor_processes.py:
`python -m tests.resource_probe MODE ...`.

    hammer RESOURCE_JSON CYCLES THREADS   acquire -> hold -> release CYCLES times across THREADS
    hold RESOURCE_JSON                    acquire one slot, print "held", keep renewing forever

Uses redis-py and executor.resources only (no Django): REDIS_URL comes from the environment.
While a `hammer` holder holds its slot it counts itself in the shared key HOLDING and keeps
the highest count ever seen in PEAK, one atomic script, so the test reads the true peak.
"""

import json
import os
import sys
import threading
import time

import redis

from executor.resources import Denied, Resource, acquire, release, renew

# Shared keys the test reads (and flushes with the rest of Redis before each test).
HOLDING = "test:probe:holding"
PEAK = "test:probe:peak"
COMPLETED = "test:probe:completed"
# Seconds a holder keeps its slot: long enough for others to pile up behind it.
HOLD = 0.002
# Longest pause between retries of a denied acquire.
RETRY_PAUSE = 0.002
# Seconds between renewals by `hold` (its lease_ttl is a few times longer).
RENEW_EVERY = 0.1

ENTER = """
local n = redis.call('INCR', KEYS[1])
if n > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], n) end
return n
"""


def hammer(resource: Resource, cycles: int, threads: int) -> None:
    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    enter = connection.register_script(ENTER)
    owner = f"probe-{os.getpid()}"

    def cycle() -> None:
        while isinstance(grant := _acquire(resource, owner, connection), Denied):
            time.sleep(min(grant.retry_after, RETRY_PAUSE))
        enter(keys=[HOLDING, PEAK])
        time.sleep(HOLD)
        connection.decr(HOLDING)
        release(grant, connection=connection)
        connection.incr(COMPLETED)

    def work(count: int) -> None:
        for _ in range(count):
            cycle()

    shares = [cycles // threads + (i < cycles % threads) for i in range(threads)]
    workers = [threading.Thread(target=work, args=(n,)) for n in shares]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    print("done", flush=True)


def hold(resource: Resource) -> None:
    connection = redis.Redis.from_url(os.environ["REDIS_URL"])
    grant = _acquire(resource, f"probe-{os.getpid()}", connection)
    assert not isinstance(grant, Denied), grant
    print("held", grant.lease_id, flush=True)
    while renew(grant, resource, connection=connection):
        time.sleep(RENEW_EVERY)
    print("lost the lease", flush=True)
    sys.exit(1)


def _acquire(resource: Resource, owner: str, connection):
    return acquire(resource, slots=1, credits=0, owner=owner, connection=connection)


if __name__ == "__main__":
    mode, resource = sys.argv[1], Resource(**json.loads(sys.argv[2]))
    if mode == "hammer":
        hammer(resource, int(sys.argv[3]), int(sys.argv[4]))
    else:
        hold(resource)

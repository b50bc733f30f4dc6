"""Redis through Sentinel (REDIS_SENTINELS; infra/stores.py) against a real failover on
loopback (tests/sentinel.py): the sync client, the asyncio client and Django's cache follow
the master the sentinels name, and find the new one after the master is killed."""

import asyncio

import pytest
import redis
from django.core.cache import caches

from infra import stores
from tests.sentinel import SentinelRedis


@pytest.fixture
def sentinel_redis(tmp_path, settings):
    cluster = SentinelRedis(tmp_path)
    settings.REDIS_SENTINELS = [("127.0.0.1", port) for _, port in cluster.sentinels]
    settings.REDIS_URL = "redis://sentinel/3"  # the database only
    stores.redis_connection.cache_clear()
    try:
        yield cluster
    finally:
        stores.redis_connection.cache_clear()
        cluster.stop()


def written(key: str, value: str) -> bool:
    try:
        stores.redis_connection().set(key, value)
    except (redis.ConnectionError, redis.TimeoutError, redis.ReadOnlyError):
        return False  # the failover is under way: the next try asks the sentinels again
    return True


def test_the_clients_follow_the_master_across_a_failover(sentinel_redis):
    client = stores.redis_connection()
    client.set("before", "1")
    direct = redis.Redis(port=sentinel_redis.master_port, db=3)
    assert direct.get("before") == b"1"  # on the master, in REDIS_URL's database
    sentinel_redis.wait(
        lambda: redis.Redis(port=sentinel_redis.replica_port, db=3).get("before") == b"1",
        "the replica to have it",
    )

    sentinel_redis.kill_master()
    sentinel_redis.wait(
        lambda: sentinel_redis.master_address() == ("127.0.0.1", sentinel_redis.replica_port),
        "the sentinels to promote the replica",
    )
    sentinel_redis.wait(lambda: written("after", "2"), "a write to reach the new master")
    promoted = redis.Redis(port=sentinel_redis.replica_port, db=3)
    assert (promoted.get("before"), promoted.get("after")) == (b"1", b"2")
    assert client.get("after") == b"2"  # the same client object, reconnected

    async def through_the_asyncio_client():
        aclient = stores.redis_async_client(4)
        try:
            await aclient.set("async", "3")
            return await aclient.get("async")
        finally:
            await aclient.aclose()

    assert asyncio.run(through_the_asyncio_client()) == b"3"
    assert promoted.get("async") == b"3"


def test_djangos_cache_goes_through_the_sentinels(sentinel_redis, settings):
    settings.CACHES = {
        "sentinel": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": settings.REDIS_URL,
            "OPTIONS": {"pool_class": "infra.stores.CachePool"},
        }
    }
    cache = caches.create_connection("sentinel")
    cache.set("cached", 7)
    assert cache.get("cached") == 7
    assert redis.Redis(port=sentinel_redis.master_port, db=3).keys("*cached*")

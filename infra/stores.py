"""The process's connections to the stores it shares with every other process, configured from
settings only: Redis (one client per process, for RQ queues, counters and leases) and MongoDB
(mongoengine's default alias, opened lazily so forked processes each get their own).
SQL is Django's own (`DATABASES`).

What goes into Redis is JSON, never pickle: anyone who can write a key could otherwise make
every process that loads it run code. RQ's jobs use RQ_SERIALIZER (every Queue, Job, Worker
and registry the project makes), Django's cache CacheSerializer. Credentials may sit in
MONGO_URI / REDIS_URL (scheme://user:password@host); print a URI only as `redacted_uri(uri)`.
"""

import json
import re
from functools import lru_cache
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import mongoengine
import redis
from django.conf import settings
from pymongo import MongoClient
from pymongo.uri_parser import parse_uri
from redis.sentinel import Sentinel, SentinelConnectionPool
from rq.serializers import JSONSerializer

# Database used when MONGO_URI names none.
MONGO_DEFAULT_DB = "svc"
# How long a MongoDB call waits for the server before failing (the API answers 503, a job is
# retried, recon tries again next sweep).
MONGO_SERVER_SELECTION_TIMEOUT_MS = 3000
# Seconds a Redis command may take, and connecting may take, before it fails; seconds between
# checks that an idle pooled connection is still alive.
REDIS_SOCKET_TIMEOUT = 10
REDIS_CONNECT_TIMEOUT = 3
REDIS_HEALTH_CHECK_INTERVAL = 30
# Connections of the process's pool: above any executor's jobs in flight at once.
REDIS_MAX_CONNECTIONS = 2048
# How RQ stores a job's call, result and meta: JSON (job arguments are ids, results statuses).
# RQ's command line needs it too: `rq info --serializer rq.serializers.JSONSerializer`.
RQ_SERIALIZER = JSONSerializer
# What stands in for a password when a URI is printed.
REDACTED_PASSWORD = "[redacted]"
# Query parameters of a store URI that carry a secret (redis-py reads `?password=`).
_SECRET_QUERY_KEYS = {"password", "pass", "secret", "token"}
# The password of a URI anywhere in a text: scheme://user:password@ or scheme://:password@.
_URI_PASSWORD = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?=@)")


@lru_cache(maxsize=1)
def redis_connection() -> redis.Redis:
    """The process's Redis client. Its pool waits for a free connection (up to the socket
    timeout) rather than failing: redis-py's default pool raises past 100 connections, which
    an executor with hundreds of jobs in flight would reach. With REDIS_SENTINELS, its
    connections go to the master the sentinels name, asked again whenever one fails (a
    failover): a command in flight then fails once, as on any lost connection."""
    options = dict(
        max_connections=REDIS_MAX_CONNECTIONS,
        timeout=REDIS_SOCKET_TIMEOUT,
        socket_timeout=REDIS_SOCKET_TIMEOUT,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
        health_check_interval=REDIS_HEALTH_CHECK_INTERVAL,
    )
    if settings.REDIS_SENTINELS:
        pool = _sentinel_pool(BlockingSentinelConnectionPool, options)
    else:
        pool = redis.BlockingConnectionPool.from_url(settings.REDIS_URL, **options)
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True
    return client


class BlockingSentinelConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The sentinels' master, with BlockingConnectionPool's waiting for a free connection."""


def _redis_options(url: str) -> dict:
    """The database and credentials of a redis:// URL (its host is the sentinels' to say)."""
    parts = urlsplit(url)
    options = {"db": int((parts.path or "/0").lstrip("/") or 0)}
    if parts.username:
        options["username"] = parts.username
    if parts.password:
        options["password"] = parts.password
    return options


def _sentinels() -> Sentinel:
    return Sentinel(
        settings.REDIS_SENTINELS,
        socket_timeout=REDIS_CONNECT_TIMEOUT,
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
    )


def _sentinel_pool(pool_class, options: dict):
    return pool_class(
        settings.REDIS_SENTINEL_MASTER,
        _sentinels(),
        **_redis_options(settings.REDIS_URL),
        **options,
    )


def redis_async_client(max_connections: int):
    """An asyncio Redis client for the calling event loop (the API's hub, the executor's loop):
    a pool that makes a caller wait for a connection, through the sentinels when there are."""
    import redis.asyncio as aioredis
    from redis.asyncio.sentinel import Sentinel as AsyncSentinel

    if settings.REDIS_SENTINELS:
        sentinels = AsyncSentinel(
            settings.REDIS_SENTINELS,
            socket_timeout=REDIS_CONNECT_TIMEOUT,
            socket_connect_timeout=REDIS_CONNECT_TIMEOUT,
        )
        return sentinels.master_for(
            settings.REDIS_SENTINEL_MASTER,
            socket_timeout=REDIS_SOCKET_TIMEOUT,
            max_connections=max_connections,
            **_redis_options(settings.REDIS_URL),
        )
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.REDIS_URL,
        max_connections=max_connections,
        timeout=REDIS_SOCKET_TIMEOUT,
        socket_timeout=REDIS_SOCKET_TIMEOUT,
    )
    return aioredis.Redis(connection_pool=pool)


class CachePool:
    """Django's Redis cache's pool (CACHES OPTIONS pool_class): REDIS_URL's server, or the
    sentinels' master."""

    @classmethod
    def from_url(cls, url: str, **options):
        if settings.REDIS_SENTINELS:
            return _sentinel_pool(SentinelConnectionPool, options)
        return redis.ConnectionPool.from_url(url, **options)


def mongo_connect() -> None:
    """(Re)register the default MongoDB connection; the socket opens on first use."""
    db = parse_uri(settings.MONGO_URI).get("database") or MONGO_DEFAULT_DB
    mongoengine.disconnect()
    mongoengine.connect(
        db=db,
        host=settings.MONGO_URI,
        connect=False,  # pymongo is not fork-safe: connect on first use in each process
        tz_aware=True,
        uuidRepresentation="standard",
        serverSelectionTimeoutMS=MONGO_SERVER_SELECTION_TIMEOUT_MS,
    )


def mongo_db():
    """The default connection's database (pymongo), for code that needs raw collections."""
    return mongoengine.connection.get_db()


def mongo_ping() -> None:
    mongoengine.get_connection().admin.command("ping")


def redis_ping() -> None:
    redis_connection().ping()


def uri_port(uri: str) -> int | None:
    """The port a single-host mongodb:// URI names, or None (none, or several hosts)."""
    netloc = urlsplit(uri).netloc.rpartition("@")[2]
    if "," in netloc or not netloc.rpartition(":")[2].isdigit() or netloc.endswith("]"):
        return None
    return int(netloc.rpartition(":")[2])


def uri_with_port(uri: str, port: int) -> str:
    """The single-host URI with `port` added to its host (the seed gives them apart)."""
    parts = urlsplit(uri)
    return urlunsplit(parts._replace(netloc=f"{parts.netloc}:{port}"))


@lru_cache(maxsize=8)
def _mongo_client(uri: str):
    return MongoClient(
        uri,
        connect=False,
        tz_aware=True,
        uuidRepresentation="standard",
        serverSelectionTimeoutMS=MONGO_SERVER_SELECTION_TIMEOUT_MS,
    )


def mongo_db_at(uri: str = "", db: str = ""):
    """Database `db` (default: the URI's) of the MongoDB at `uri`; with no uri, the app's own
    connection (MONGO_URI). One client per URI and process, opened on first use."""
    if not uri or uri == settings.MONGO_URI:
        return mongo_db() if not db else mongoengine.get_connection()[db]
    return _mongo_client(uri)[db or parse_uri(uri).get("database") or MONGO_DEFAULT_DB]


def redacted_uri(uri: str) -> str:
    """`uri` fit to print: its password (userinfo or `?password=`) replaced, the rest kept so
    the reader still sees which server and user it names."""
    parts = urlsplit(uri)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        userinfo = f"{userinfo.partition(':')[0]}:{REDACTED_PASSWORD}"
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key.lower() in _SECRET_QUERY_KEYS for key, _ in query):  # else kept as written
        query = [
            (key, REDACTED_PASSWORD if key.lower() in _SECRET_QUERY_KEYS else value)
            for key, value in query
        ]
        parts = parts._replace(query=urlencode(query, safe="[]:,"))
    return urlunsplit(parts._replace(netloc=f"{userinfo}{at}{hosts}"))


def redact_uri_passwords(text: str) -> str:
    """`text` with the password of every URI in it replaced (e.g. a config's plain values)."""
    return _URI_PASSWORD.sub(lambda match: match[1] + REDACTED_PASSWORD, text)


class CacheSerializer:
    """Django's Redis cache (CACHES' OPTIONS "serializer") in JSON instead of pickle. Integers
    stay bare, as Django's own serializer keeps them, so `incr()` and `decr()` work; values
    must be JSON types (a datetime raises TypeError on `set()`, never later on `get()`)."""

    def dumps(self, obj):
        if type(obj) is int:
            return obj
        return json.dumps(obj, separators=(",", ":")).encode()

    def loads(self, data):
        try:
            return int(data)
        except ValueError:
            return json.loads(data)

"""infra/stores.py: store URIs printed without their passwords, and Django's cache in JSON."""

import pytest
from django.core.cache import cache

from infra.stores import REDACTED_PASSWORD, redact_uri_passwords, redacted_uri, redis_connection
from tests.executor.test_job_format import pickled


@pytest.mark.parametrize(
    "uri, shown",
    [
        ("redis://svc:s3cret@cache:6379/0", "redis://svc:[redacted]@cache:6379/0"),
        ("redis://:s3cret@cache:6379/0", "redis://:[redacted]@cache:6379/0"),
        ("rediss://svc:p%40ss%3Aw0rd@cache/1", "rediss://svc:[redacted]@cache/1"),
        (
            "redis://cache:6379/0?password=s3cret&db=2",
            "redis://cache:6379/0?password=[redacted]&db=2",
        ),
        (
            "mongodb://svc:s3cret@db1:27017,db2:27017/svc?authSource=admin&replicaSet=rs0",
            "mongodb://svc:[redacted]@db1:27017,db2:27017/svc?authSource=admin&replicaSet=rs0",
        ),
        (
            "mongodb+srv://svc:s3cret@cluster.example/svc",
            "mongodb+srv://svc:[redacted]@cluster.example/svc",
        ),
        ("mongodb://127.0.0.1:27017/svc?directConnection=true", None),  # nothing to hide
        ("redis://svc@cache:6379/0", None),  # a user without a password
    ],
)
def test_a_uri_is_shown_without_its_password(uri, shown):
    assert redacted_uri(uri) == (shown or uri)
    assert "s3cret" not in redacted_uri(uri) and "p%40ss" not in redacted_uri(uri)
    if shown:
        assert REDACTED_PASSWORD in redacted_uri(uri)


def test_the_cache_keeps_json_not_pickle():
    cache.set("probe", {"ids": ["a", "b"], "n": 2})
    cache.set("count", 1)
    assert cache.get("probe") == {"ids": ["a", "b"], "n": 2}
    assert cache.incr("count") == 2  # integers stay bare, so incr/decr work
    [key] = [k for k in redis_connection().scan_iter("*probe")]
    raw = redis_connection().get(key)
    assert raw == b'{"ids":["a","b"],"n":2}' and not pickled(raw)


def test_the_cache_refuses_what_json_cannot_hold():
    with pytest.raises(TypeError):
        cache.set("probe", object())


def test_passwords_of_uris_in_a_text_are_replaced():
    text = "a: redis://:pw-1@cache/0\nb: mongodb://svc:pw-2@db1,db2/svc\nc: https://example.com/x@y"
    assert redact_uri_passwords(text) == (
        "a: redis://:[redacted]@cache/0\nb: mongodb://svc:[redacted]@db1,db2/svc\n"
        "c: https://example.com/x@y"
    )

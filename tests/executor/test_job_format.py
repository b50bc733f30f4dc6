"""What Redis holds after requests ran through a real executor process: JSON, never pickle
(infra/stores.py: RQ_SERIALIZER for RQ, CacheSerializer for Django's cache)."""

import base64
import binascii
import os
import re
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from django.core.cache import cache
from rq import Queue
from rq.serializers import PickleSerializer

from infra.stores import redis_connection
from tests.executor.test_concurrency import statuses
from tests.helpers import executor_process, submit

# The executor process runs the jobs with SQL connections of its own: the test's rows must be
# committed, not held in the test's transaction.
pytestmark = pytest.mark.django_db(transaction=True)

# Pickle's first bytes: the PROTO opcode, then protocol 2 to 5 (0 and 1 have no header).
PICKLE_PROTOCOLS = range(2, 6)


def pickled(value: bytes, depth: int = 3) -> bool:
    """Whether `value` is a pickle, or holds one under zlib or base64 (RQ compresses a job's
    call with zlib and base64-encodes the return value in its results stream)."""
    if len(value) >= 2 and value[0] == 0x80 and value[1] in PICKLE_PROTOCOLS:
        return True
    if depth == 0:
        return False
    for decode in (zlib.decompress, lambda v: base64.b64decode(v, validate=True)):
        try:
            inner = decode(value)
        except (zlib.error, binascii.Error, ValueError):
            continue
        if pickled(inner, depth - 1):
            return True
    return False


def values(connection, key: bytes) -> list[bytes]:
    """Every member, field and value of a key, whatever its type."""
    kind = connection.type(key).decode()
    if kind == "string":
        return [connection.get(key)]
    if kind == "hash":
        return [item for pair in connection.hgetall(key).items() for item in pair]
    if kind == "list":
        return connection.lrange(key, 0, -1)
    if kind == "set":
        return list(connection.smembers(key))
    if kind == "zset":
        return connection.zrange(key, 0, -1)
    if kind == "stream":
        return [
            item for _, fields in connection.xrange(key) for pair in fields.items() for item in pair
        ]
    raise AssertionError(f"{key!r}: a {kind} the scan does not read")


def pickled_keys() -> dict[str, str]:
    """The keys of the Redis db that hold a pickle, with their type."""
    connection = redis_connection()
    return {
        key.decode(): connection.type(key).decode()
        for key in connection.scan_iter(count=1000)
        if any(pickled(value) for value in values(connection, key) if isinstance(value, bytes))
    }


def key_types() -> set[str]:
    connection = redis_connection()
    return {connection.type(key).decode() for key in connection.scan_iter(count=1000)}


def finish(process: subprocess.Popen, timeout: float = 90) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        raise AssertionError(f"executor did not stop:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]
    return output


def test_after_requests_ran_redis_holds_no_pickle(alice_api, make_offer):
    make_offer(service="t", action="echo")
    make_offer(service="t", action="fail", handler="local.fail")
    for i in range(3):
        submit(alice_api, "/svc/t/echo/", {"x": i})
    submit(alice_api, "/svc/t/fail/", {"x": "boom"})
    cache.set("probe", {"cached": ["by", "django"]})
    queued = key_types()
    assert pickled_keys() == {}  # the queued jobs

    finish(executor_process("--burst", "--concurrency", "4"))

    assert statuses() == {"succeeded": 3, "failed": 1}
    assert pickled_keys() == {}  # their results, the registries, the worker's records
    # What the two scans went through: queues (lists), jobs (hashes), registries (sorted
    # sets), results (streams), the cache and counters (strings).
    assert {"string", "hash", "list", "zset", "stream"} <= queued | key_types()


def test_the_scan_finds_a_job_rq_pickled():
    """The check can fail: a job enqueued with RQ's default serializer is found."""
    job = Queue("probe", connection=redis_connection(), serializer=PickleSerializer).enqueue(
        "executor.jobs.run_request", "some-id"
    )
    assert pickled_keys() == {f"rq:job:{job.id}": "hash"}


def test_rq_s_command_line_reads_the_queues_with_the_json_serializer(alice_api, make_offer):
    """What README's operations section tells operators to run."""
    make_offer(service="t", action="echo")
    submit(alice_api, "/svc/t/echo/", {"x": 1})
    rq = Path(sys.executable).with_name("rq")
    result = subprocess.run(
        [str(rq), "info", "--url", os.environ["REDIS_URL"]]
        + ["--serializer", "rq.serializers.JSONSerializer", "--only-queues"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"svc-local\s+\|\S* 1\b", result.stdout), result.stdout

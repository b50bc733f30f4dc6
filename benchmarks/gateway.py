"""Gateway: streamed `POST /v1/chat/completions` (issue 18) against a loopback chat upstream.

The upstream is tests/stubs/chat_upstream.py in a process of its own, with `--stamp`: each
content chunk carries `x_sent`, the wall clock as the upstream sent it, which the gateway
passes through. The client is this process (httpx), on the same machine's clock. The stack is
`make run`'s: the API's gunicorn (uvicorn workers), one executor (`runexecutor`) that streams
from the upstream and publishes each chunk through Redis, the API relaying it as SSE.

1. First token. CALLS sequential streamed calls each way, gateway and straight to the upstream
   (alternating, after WARMUP of each that are not counted): how late the first content chunk
   reaches the client after the upstream sent it (arrival − x_sent; on loopback, x_sent is its
   arrival at the executor: the issue's target is 50 ms), and after the POST was sent (what a
   user feels: intake, queue, executor pickup, the upstream call, the relay). The gateway's
   POST → first token is split by its request's times (MongoDB's, to the millisecond) and
   its RQ job's: POST → created_at (intake: key, throttles, body) → enqueued_at (insert, hold,
   enqueue) → the job's started_at (an executor takes it) → the request's started_at (the job
   reads it, takes a resource slot) → x_sent (its running write, the upstream call) → arrival
   (the relay).
2. Throughput. STREAMS calls at once of a REPLY_TOKENS-token reply, the upstream sending with
   no pause, through ONE API process (a second gunicorn with one worker, as the waiting
   scenario runs): content chunks relayed per second, and CPU per 1,000 chunks of that API
   worker, of the executor, of Redis, and of the main API's workers (every API process hears
   every chunk on the events channel, api/events.py). Every stream must end with [DONE] and
   carry the whole reply; errors are counted and reported.
"""

import asyncio
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pymongo
import redis

from benchmarks import measure
from benchmarks.stack import (
    GATEWAY_MODEL,
    GATEWAY_UPSTREAM_KEY,
    Stack,
    listening,
    wait_until,
)
from benchmarks.waiting import _healthy, _worker_pid

# 1. First token: calls each way, and the uncounted ones before them (the first call of a
# process opens its connections and subscribes its hub).
CALLS = 100
WARMUP = 5
SHORT_REPLY = " ".join(f"word{i}" for i in range(20))
SHORT_TOKEN_DELAY = 0.005  # seconds between tokens, as a fast model streams them
# 2. Throughput: streams at once, tokens each, through one API process.
STREAMS = 40
REPLY_TOKENS = 2000
LONG_REPLY = " ".join(f"w{i}" for i in range(REPLY_TOKENS))
GATEWAY_API_WORKERS = "1"
EXECUTOR_CONCURRENCY = 64
MESSAGES = [{"role": "user", "content": "say something about the sea"}]
CALL_TIMEOUT = 60.0
THROUGHPUT_TIMEOUT = 300.0
# Seconds the processes' CPU is read while nothing happens, before the throughput's streams:
# what the main API's workers spend anyway (their share of the chunks is the rest).
QUIET_SECONDS = 5.0


def run(stack: Stack, main_api, api_port: int, upstream_port: int, gateway_port: int) -> dict:
    """`main_api`: the API's gunicorn (on `api_port`); the gateway's own one-worker API gets
    `gateway_port`, the chat upstream the upstream's port."""
    executor = stack.python(
        "gateway-executor",
        "manage.py",
        "runexecutor",
        "--concurrency",
        str(EXECUTOR_CONCURRENCY),
    )
    mongo = pymongo.MongoClient(stack.mongo.uri, tz_aware=True)
    requests = mongo.get_default_database()["requests"]
    try:
        upstream = _start_upstream(stack, upstream_port, SHORT_REPLY, SHORT_TOKEN_DELAY)
        try:
            first = _first_tokens(stack, api_port, upstream_port, requests, executor)
        finally:
            stack.stop(upstream)
        upstream = _start_upstream(stack, upstream_port, LONG_REPLY, 0.0)
        api = stack.gunicorn(gateway_port, "--workers", GATEWAY_API_WORKERS, name="gateway-api")
        try:
            wait_until(lambda: _healthy(gateway_port), timeout=60, what="the gateway API")
            pids = {
                "api": _worker_pid(api.pid),
                "executor": executor.pid,
                "redis": stack.redis.process.pid,
                "mongo": stack.mongo.process.pid,
                "upstream": upstream.pid,
                "main_api": main_api.pid,
            }
            throughput = _throughput(stack, gateway_port, pids, requests, executor)
        finally:
            stack.stop(api)
            stack.stop(upstream)
    finally:
        stack.stop(executor)
        mongo.close()
    result = {"first_token": first, "throughput": throughput}
    if first["errors"] or throughput["errors"]:
        result["executor_log_tail"] = stack.log_tail("gateway-executor", 4000)
        result["api_log_tail"] = stack.log_tail("gateway-api", 4000)
    return result


def _start_upstream(stack: Stack, port: int, reply: str, token_delay: float):
    upstream = stack.python(
        "chat-upstream",
        "-m",
        "tests.stubs.chat_upstream",
        "--port",
        str(port),
        "--api-key",
        GATEWAY_UPSTREAM_KEY,
        "--reply",
        reply,
        "--token-delay",
        str(token_delay),
        "--stamp",
    )
    wait_until(lambda: listening(port), timeout=30, what="the chat upstream")
    return upstream


# --- 1. first token ---------------------------------------------------------------------------


class _Call:
    """One streamed call as its client saw it (wall clock, seconds since the epoch)."""

    def __init__(self):
        self.posted = 0.0
        self.first_at: float | None = None
        self.first_sent: float | None = None  # the first content chunk's x_sent
        self.last_at: float | None = None  # the last content chunk's arrival
        self.text = ""
        self.chunks = 0  # content chunks
        self.done = False
        self.error: str | None = None
        self.request_id: str | None = None
        self.lags: list[float] = []  # arrival − x_sent of every content chunk, seconds

    def line(self, line: str) -> None:
        if not line.startswith("data: "):
            return
        data = line[6:]
        if data == "[DONE]":
            self.done = True
            return
        now = time.time()
        chunk = json.loads(data)
        if chunk.get("error"):
            self.error = f"error event: {chunk['error'].get('code')}"
            return
        content = "".join(
            (choice.get("delta") or {}).get("content") or ""
            for choice in chunk.get("choices") or ()
        )
        if not content:
            return
        sent = chunk.get("x_sent")
        if self.first_at is None:
            self.first_at, self.first_sent = now, sent
        if sent is not None:
            self.lags.append(now - sent)
        self.last_at = now
        self.chunks += 1
        self.text += content

    def check(self, reply: str) -> None:
        if self.error is None and not self.done:
            self.error = "no [DONE]"
        elif self.error is None and self.text != reply:
            self.error = f"reply cut: {len(self.text)} of {len(reply)} characters"


def _stream_sync(client: httpx.Client, url: str, token: str, body: dict, reply: str) -> _Call:
    call = _Call()
    call.posted = time.time()
    try:
        headers = {"Authorization": f"Bearer {token}"}
        with client.stream("POST", url, json=body, headers=headers) as answer:
            call.request_id = answer.headers.get("x-request-id")
            if answer.status_code != 200:
                call.error = f"HTTP {answer.status_code}: {answer.read()[:200]!r}"
                return call
            for line in answer.iter_lines():
                call.line(line)
    except (httpx.HTTPError, OSError, ValueError) as exc:
        call.error = type(exc).__name__
    call.check(reply)
    return call


def _first_tokens(stack: Stack, api_port: int, upstream_port: int, requests, executor) -> dict:
    gateway = (f"http://127.0.0.1:{api_port}/v1/chat/completions", stack.token, GATEWAY_MODEL)
    direct = (
        f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
        GATEWAY_UPSTREAM_KEY,
        "bench-upstream",
    )
    calls: dict[str, list[_Call]] = {"gateway": [], "direct": []}
    with httpx.Client(timeout=CALL_TIMEOUT) as client:
        for i in range(WARMUP + CALLS):
            for name, (url, token, model) in (("direct", direct), ("gateway", gateway)):
                body = {"model": model, "messages": MESSAGES, "stream": True}
                call = _stream_sync(client, url, token, body, SHORT_REPLY)
                if i >= WARMUP:
                    calls[name].append(call)
            if executor.poll() is not None:
                raise RuntimeError(f"the executor exited:\n{stack.log_tail('gateway-executor')}")
    result: dict = {
        "calls": CALLS,
        "reply_tokens": len(SHORT_REPLY.split()),
        "token_delay_s": SHORT_TOKEN_DELAY,
        "errors": sum(1 for c in calls["gateway"] + calls["direct"] if c.error),
        "first_error": next((c.error for c in calls["gateway"] + calls["direct"] if c.error), None),
    }
    for name, made in calls.items():
        good = [c for c in made if c.first_at is not None and c.first_sent is not None]
        relay = sorted((c.first_at - c.first_sent) * 1000 for c in good)
        after_post = sorted((c.first_at - c.posted) * 1000 for c in good)
        result[name] = {
            "answered": len(good),
            "errors": sum(1 for c in made if c.error),
            **_spread("relay_ms", relay),
            **_spread("after_post_ms", after_post),
        }
    redis_client = redis.Redis.from_url(stack.redis.uri)
    try:
        result["gateway_stages"] = _stages(calls["gateway"], requests, redis_client)
    finally:
        redis_client.close()
    return result


def _stages(calls: list[_Call], requests, redis_client: redis.Redis) -> dict:
    """Where a gateway call's time to first token goes, by its request's own times (MongoDB's,
    to the millisecond) and its RQ job's (enqueued, started: the job id is the request id)."""
    by_id = {c.request_id: c for c in calls if c.request_id and c.first_at and c.first_sent}
    found = requests.find({"_id": {"$in": list(by_id)}}, {"created_at": 1, "started_at": 1})
    names = ("intake", "enqueue", "pickup", "job", "call", "relay")
    stages: dict[str, list[float]] = {name: [] for name in names}
    for doc in found:
        call = by_id[doc["_id"]]
        job = redis_client.hmget(f"rq:job:{doc['_id']}", "enqueued_at", "started_at")
        if not doc.get("started_at") or not all(job):
            continue
        times = (
            call.posted,
            doc["created_at"].timestamp(),  # the document made (before its insert)
            _rq_time(job[0]),  # the job pushed on its queue (the hold taken before)
            _rq_time(job[1]),  # an executor took it
            doc["started_at"].timestamp(),  # the request claimed (before its running write)
            call.first_sent,  # the upstream sent its first token
            call.first_at,  # it reached the client
        )
        for name, start, end in zip(names, times[:-1], times[1:], strict=True):
            stages[name].append((end - start) * 1000)
    out = {}
    for name, values in stages.items():
        out.update(_spread(f"{name}_ms", sorted(values)))
    return out


def _rq_time(value: bytes) -> float:
    return (
        datetime.strptime(value.decode(), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
    )


def _spread(name: str, values: list[float]) -> dict:
    if not values:
        return {f"{name}_p50": None, f"{name}_p99": None, f"{name}_max": None}
    return {
        f"{name}_p50": round(measure.percentile(values, 0.50), 1),
        f"{name}_p99": round(measure.percentile(values, 0.99), 1),
        f"{name}_max": round(values[-1], 1),
    }


# --- 2. throughput ----------------------------------------------------------------------------


async def _stream_async(client: httpx.AsyncClient, token: str, body: dict, reply: str) -> _Call:
    call = _Call()
    call.posted = time.time()
    try:
        headers = {"Authorization": f"Bearer {token}"}
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=headers) as a:
            call.request_id = a.headers.get("x-request-id")
            if a.status_code != 200:
                call.error = f"HTTP {a.status_code}: {(await a.aread())[:200]!r}"
                return call
            async for line in a.aiter_lines():
                call.line(line)
    except (httpx.HTTPError, OSError, ValueError) as exc:
        call.error = type(exc).__name__
    call.check(reply)
    return call


async def _streams(port: int, token: str, n: int, reply: str, max_tokens: int | None = None):
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    body = {"model": GATEWAY_MODEL, "messages": MESSAGES, "stream": True}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=THROUGHPUT_TIMEOUT
    ) as client:
        return await asyncio.gather(*(_stream_async(client, token, body, reply) for _ in range(n)))


def _throughput(stack: Stack, port: int, pids: dict, requests, executor) -> dict:
    # Warm-up, not counted: the worker's hub subscribes, the pools open.
    asyncio.run(_streams(port, stack.token, 2, " ".join(LONG_REPLY.split()[:5]), max_tokens=5))
    quiet = measure.CpuMeter(pids).start()
    time.sleep(QUIET_SECONDS)
    quiet.stop()
    cpu = measure.CpuMeter(pids).start()
    threads = {name: _thread_cpu(pids[name]) for name in ("api", "executor")}
    client_cpu, started = time.process_time(), time.time()
    calls = asyncio.run(_streams(port, stack.token, STREAMS, LONG_REPLY))
    wall = time.time() - started
    client_cpu = time.process_time() - client_cpu
    seconds = cpu.stop()
    threads = {name: _thread_split(pids[name], before) for name, before in threads.items()}
    if executor.poll() is not None:
        raise RuntimeError(f"the executor exited:\n{stack.log_tail('gateway-executor')}")
    chunks = sum(c.chunks for c in calls)
    lags = sorted(lag * 1000 for c in calls for lag in c.lags)
    relayed = [c for c in calls if c.first_at is not None]
    # From the first content chunk to the last: the relaying itself, without the intake of
    # the first call and the end (its writes, [DONE]) of the last.
    streaming_s = (
        max(c.last_at for c in relayed) - min(c.first_at for c in relayed) if relayed else 0.0
    )
    ids = [c.request_id for c in calls if c.request_id]
    statuses: dict[str, int] = {}
    for doc in requests.find({"_id": {"$in": ids}}, {"status": 1}):
        statuses[doc["status"]] = statuses.get(doc["status"], 0) + 1
    per_1k = {
        name: round(spent * 1000 * 1000 / chunks, 1) if chunks else None
        for name, spent in seconds.items()
    }
    return {
        "streams": STREAMS,
        "reply_tokens": REPLY_TOKENS,
        "executor_concurrency": EXECUTOR_CONCURRENCY,
        "chunks": chunks,
        "chunks_expected": STREAMS * REPLY_TOKENS,
        "complete": sum(1 for c in calls if c.error is None),
        "errors": sum(1 for c in calls if c.error),
        "first_error": next((c.error for c in calls if c.error), None),
        "statuses": statuses,
        "wall_s": round(wall, 2),
        "streaming_s": round(streaming_s, 2),
        "chunks_per_second": round(chunks / wall, 1) if wall else None,
        "chunks_per_second_streaming": round(chunks / streaming_s, 1) if streaming_s else None,
        "cpu_s": seconds,
        "cores_busy": cpu.cores(wall),
        "cores_quiet": quiet.cores(QUIET_SECONDS),
        # CPU seconds of each process's busiest thread (its event loop) and of all the others
        # (the executor's job threads, the API's WSGI threads, pymongo's monitors).
        "threads_cpu_s": threads,
        # CPU milliseconds per 1,000 content chunks relayed, of each process (tree).
        "cpu_ms_per_1k_chunks": per_1k,
        "client_cpu_ms_per_1k_chunks": round(client_cpu * 1e6 / chunks, 1) if chunks else None,
        "client_cores": round(client_cpu / wall, 2) if wall else None,
        "api_peak_rss_mb": round(measure.vm_hwm_mb(pids["api"]), 1),
        # arrival − x_sent of every content chunk under this load (the client's own reading
        # of 40 streams in one Python process included).
        **_spread("chunk_lag_ms", lags),
    }


def _thread_cpu(pid: int) -> dict[int, float]:
    """user + system CPU seconds of each thread of the process, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # the thread ended
        found[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick
    return found


def _thread_split(pid: int, before: dict[int, float]) -> dict:
    spent = sorted(
        (seconds - before.get(tid, 0.0) for tid, seconds in _thread_cpu(pid).items()),
        reverse=True,
    )
    return {
        "busiest": round(spent[0], 2) if spent else 0.0,
        "others": round(sum(spent[1:]), 2),
        "threads": len(spent),
    }

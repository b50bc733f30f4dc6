"""One asyncio loop per executor process, in a background thread, shared by every job.

Handlers run on it: async ones directly, sync ones in the loop's thread pool, so a blocking
handler never stalls the others. The shared HTTP clients live on this loop and keep their
connection pools across jobs.
"""

import asyncio
import atexit
import concurrent.futures
import contextlib
import itertools
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import uvloop

from executor import defaults
from infra import stores

_TIMEOUT = httpx.Timeout(defaults.HTTP_TIMEOUT, connect=defaults.HTTP_CONNECT_TIMEOUT)


_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_clients: list[httpx.AsyncClient] = []
_next_client = itertools.count()


def loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            new_loop = uvloop.new_event_loop()
            new_loop.set_default_executor(
                ThreadPoolExecutor(defaults.SYNC_HANDLER_THREADS, thread_name_prefix="sync-handler")
            )
            threading.Thread(target=new_loop.run_forever, name="executor-loop", daemon=True).start()
            _loop = new_loop
    return _loop


def warm_up() -> None:
    """Make the loop and its HTTP clients now, before any job holds a lease: making 32 clients
    takes the loop most of a second (more on a loaded machine), which a first call holding a
    resource slot would otherwise spend with its lease unrenewed (tests/system/test_cluster.py
    saw a short lease_ttl lapse so)."""

    async def make_clients() -> None:
        http_client()

    run(make_clients())


def loop_problem(timeout: float = 5.0) -> str:
    """ "" while the shared loop (if it was made) runs a callback within `timeout` seconds;
    else what is wrong (the liveness probe's look, infra/probe.py)."""
    current = _loop
    if current is None or current.is_closed():
        return ""
    answered = threading.Event()
    current.call_soon_threadsafe(answered.set)
    if answered.wait(timeout):
        return ""
    return f"its asyncio loop did not answer within {timeout:g}s"


def run(coro):
    """Run a coroutine on the shared loop from any thread and wait for its result.

    The wait is sliced so the calling thread keeps executing Python code: RQ's
    TimerDeathPenalty (an exception raised asynchronously in the job's thread) can land, and
    then the coroutine is cancelled rather than left running.
    """
    future = asyncio.run_coroutine_threadsafe(coro, loop())
    try:
        while True:
            try:
                return future.result(defaults.WAIT_SLICE)
            except concurrent.futures.TimeoutError:
                if hand_back.is_set():
                    raise HandedBack() from None
                cancel = getattr(job_context, "cancel", None)
                if cancel is not None and cancel.is_set():
                    raise Canceled() from None
    except BaseException:
        future.cancel()
        raise


class Canceled(Exception):
    """The client canceled the request this job runs; its calls were cancelled."""


# Per job thread: `cancel`, an Event the executor sets when RQ's stop-job command names it.
job_context = threading.local()


class HandedBack(Exception):
    """The process is shutting down and gave this job back to its queue unfinished."""


# Set when the executor stops before its jobs finish: every waiting job cancels its calls and
# raises HandedBack so its request goes back to the queue instead of being lost.
hand_back = threading.Event()


def http_client() -> httpx.AsyncClient:
    """One of the process's shared async HTTP clients, in turn; call it from code running on
    `loop()` (so the clients are created, and handed out, on that one thread)."""
    if not _clients:
        per_client = defaults.HTTP_MAX_CONNECTIONS // defaults.HTTP_CLIENTS
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        _clients.extend(
            httpx.AsyncClient(timeout=_TIMEOUT, limits=limits, follow_redirects=False)
            for _ in range(defaults.HTTP_CLIENTS)
        )
    return _clients[next(_next_client) % defaults.HTTP_CLIENTS]


_redis = None


def redis_client():
    """The process's asyncio Redis client, for code running on `loop()` (a gateway call's
    chunks, executor/relay.py); made there on first use."""
    global _redis
    if _redis is None:
        # A pool that makes a caller wait for a connection (the default one raises past it).
        _redis = stores.redis_async_client(defaults.REDIS_ASYNC_CONNECTIONS)
    return _redis


@atexit.register
def _shutdown() -> None:
    if _loop is None or _loop.is_closed():
        return
    for client in _clients:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(client.aclose(), _loop).result(5)
    _loop.call_soon_threadsafe(_loop.stop)

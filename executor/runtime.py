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

# Connections kept per upstream host by all shared HTTP clients together.
HTTP_MAX_CONNECTIONS = 512
# Shared HTTP clients, used in turn. httpcore's pool looks at every connection it holds (a
# syscall or two each) whenever a request starts or ends, and counts its idle connections
# once per idle connection: at 200 calls in flight one pool spent a third of the executor's
# CPU doing so (docs/benchmarks.md). 32 pools of ~6 connections cost ~1/1000 of that.
HTTP_CLIENTS = 32
# Default timeouts of the shared HTTP client; handlers may pass tighter ones per call.
HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# Seconds between checks of a waiting job thread for an asynchronous exception (job timeout).
WAIT_SLICE = 0.25
# Threads for sync handlers; each blocking call holds one while it runs.
SYNC_HANDLER_THREADS = 256

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
                ThreadPoolExecutor(SYNC_HANDLER_THREADS, thread_name_prefix="sync-handler")
            )
            threading.Thread(target=new_loop.run_forever, name="executor-loop", daemon=True).start()
            _loop = new_loop
    return _loop


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
                return future.result(WAIT_SLICE)
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
        per_client = HTTP_MAX_CONNECTIONS // HTTP_CLIENTS
        limits = httpx.Limits(max_connections=per_client, max_keepalive_connections=per_client)
        _clients.extend(
            httpx.AsyncClient(timeout=HTTP_TIMEOUT, limits=limits, follow_redirects=False)
            for _ in range(HTTP_CLIENTS)
        )
    return _clients[next(_next_client) % HTTP_CLIENTS]


@atexit.register
def _shutdown() -> None:
    if _loop is None or _loop.is_closed():
        return
    for client in _clients:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(client.aclose(), _loop).result(5)
    _loop.call_soon_threadsafe(_loop.stop)

"""One asyncio loop per executor process, in a background thread, shared by every job.

Handlers run on it: async ones directly, sync ones in the loop's thread pool, so a blocking
handler never stalls the others. The shared `httpx.AsyncClient` lives on this loop and keeps
its connection pool across jobs.
"""

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx

# Connections kept per upstream host by the shared HTTP client.
HTTP_MAX_CONNECTIONS = 512
# Default timeouts of the shared HTTP client; handlers may pass tighter ones per call.
HTTP_TIMEOUT = httpx.Timeout(60.0, connect=10.0)
# Seconds between checks of a waiting job thread for an asynchronous exception (job timeout).
WAIT_SLICE = 0.25
# Threads for sync handlers; each blocking call holds one while it runs.
SYNC_HANDLER_THREADS = 256

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_client: httpx.AsyncClient | None = None


def loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            new_loop = asyncio.new_event_loop()
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
    """The process's shared async HTTP client; call it from code running on `loop()`."""
    global _client
    if _client is None:
        _client = httpx.AsyncClient(
            timeout=HTTP_TIMEOUT,
            limits=httpx.Limits(
                max_connections=HTTP_MAX_CONNECTIONS, max_keepalive_connections=HTTP_MAX_CONNECTIONS
            ),
            follow_redirects=False,
        )
    return _client


@atexit.register
def _shutdown() -> None:
    if _loop is None or _loop.is_closed():
        return
    if _client is not None:
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(_client.aclose(), _loop).result(5)
    _loop.call_soon_threadsafe(_loop.stop)

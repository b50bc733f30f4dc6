"""One API process's ear on the request events (api/events.py), shared by all its live answers.

Each process subscribes once to the events channel, however many clients wait: a live answer
(an SSE stream, a WebSocket subscription, a `Prefer: wait`) `watch`es a request id and gets an
asyncio queue of that request's events; a message for a request nobody here watches costs a
dictionary look-up. When the subscription breaks (Redis restarted, failed over), the hub
reconnects with backoff and tells every watcher to `RESYNC` — look at the document again, since
events published meanwhile were not heard.

The hub also shares the looks at the queues: `queue_position` reads a queue's waiting jobs at
most once a second, whatever number of streams show a place in it.
"""

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from django.conf import settings
from rq import Queue

from api import events
from infra import stores

logger = logging.getLogger(__name__)

# Seconds a watcher waits for the subscription before it goes on without (it then relies on
# looking at the document), and the longest pause between reconnections.
SUBSCRIBE_WAIT = 2.0
RECONNECT_MAX = 5.0
# A queue's positions are read again once they are this old (seconds), and at most this many.
POSITIONS_AGE = 1.0
POSITIONS_LIMIT = 10_000
# Connections of the hub's client (the subscription has its own, besides).
REDIS_CONNECTIONS = 64


@dataclass(frozen=True)
class Event:
    """An event as sent: its stream id (None: not in the stream, e.g. a new queue position),
    its type (`request` or `child`) and its data, the representation's JSON text."""

    id: str | None
    kind: str
    data: str


RESYNC = Event(None, "resync", "")
DRAIN = Event(None, "drain", "")


class Hub:
    def __init__(self, url: str):
        self._url = url
        self._watchers: dict[str, set[asyncio.Queue]] = {}
        self._task: asyncio.Task | None = None
        self._subscribed = asyncio.Event()
        self._client: aioredis.Redis | None = None
        self._positions: dict[str, tuple[float, dict[str, int]]] = {}
        self._position_locks: dict[str, asyncio.Lock] = {}
        self._draining = False

    @property
    def client(self) -> aioredis.Redis:
        """This process's asyncio Redis client (the stream reads, the queue looks)."""
        if self._client is None:
            # A pool that makes a caller wait for a connection (the default one raises past its
            # size): 1,000 streams opening at once take turns on REDIS_CONNECTIONS.
            self._client = stores.redis_async_client(REDIS_CONNECTIONS)
        return self._client

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """The process stops: every watcher ends now, and new ones end at once."""
        self._draining = True
        self._broadcast(DRAIN)

    def watching(self) -> int:
        return sum(len(queues) for queues in self._watchers.values())

    @contextlib.asynccontextmanager
    async def watch(self, request_id: str) -> AsyncIterator[asyncio.Queue]:
        """A queue of the request's events from now on, for as long as the block runs."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._listen())
        queue: asyncio.Queue = asyncio.Queue()
        if self._draining:
            queue.put_nowait(DRAIN)
        self._watchers.setdefault(request_id, set()).add(queue)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._subscribed.wait(), SUBSCRIBE_WAIT)
            yield queue
        finally:
            queues = self._watchers.get(request_id)
            if queues is not None:
                queues.discard(queue)
                if not queues:
                    del self._watchers[request_id]

    async def _listen(self) -> None:
        delay = 0.1
        while True:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(events.CHANNEL)
                self._subscribed.set()
                self._broadcast(RESYNC)  # whatever was published while not subscribed
                delay = 0.1
                while True:
                    message = await pubsub.get_message(timeout=30.0)
                    if message is not None and message["type"] == "message":
                        self._dispatch(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._subscribed.clear()
                logger.warning(
                    "request events: subscription lost (%s); again in %.1f s",
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    def _dispatch(self, raw: bytes) -> None:
        request_id = raw[: raw.find(b" ")].decode()
        queues = self._watchers.get(request_id)
        if not queues:
            return
        _, stream_id, kind, data = events.parse_message(raw)
        event = Event(stream_id, kind, data)
        for queue in queues:
            queue.put_nowait(event)

    def _broadcast(self, event: Event) -> None:
        for queues in self._watchers.values():
            for queue in queues:
                queue.put_nowait(event)

    async def history(self, request_id: str, after: str) -> list[Event] | None:
        """The request's events after stream id `after`, or None when some of them are no
        longer kept (the stream expired or was trimmed past it)."""
        key = events.stream_key(request_id)
        first = await self.client.xrange(key, count=1)
        if not first or id_key(_text(first[0][0])) > id_key(after):
            return None
        entries = await self.client.xrange(key, min=f"({after}", max="+")
        return [
            Event(_text(stream_id), *events.parse_entry(fields)) for stream_id, fields in entries
        ]

    async def last_id(self, request_id: str) -> str | None:
        """The stream id of the request's latest event, if it has any kept."""
        last = await self.client.xrevrange(events.stream_key(request_id), count=1)
        return _text(last[0][0]) if last else None

    async def queue_position(self, queue: str, job_id: str) -> int | None:
        """The job's place in `queue`, from a look at most POSITIONS_AGE old (shared)."""
        seen = self._positions.get(queue)
        if seen is None or time.monotonic() - seen[0] > POSITIONS_AGE:
            lock = self._position_locks.setdefault(queue, asyncio.Lock())
            async with lock:
                seen = self._positions.get(queue)
                if seen is None or time.monotonic() - seen[0] > POSITIONS_AGE:
                    key = f"{Queue.redis_queue_namespace_prefix}{queue}"
                    ids = await self.client.lrange(key, 0, POSITIONS_LIMIT - 1)
                    seen = (time.monotonic(), {_text(i): n for n, i in enumerate(ids)})
                    self._positions[queue] = seen
        return seen[1].get(job_id)


def id_key(stream_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair; ValueError for anything else."""
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


_hub: Hub | None = None
_stopping = False


def drain() -> None:
    """Called by the worker when it is told to stop (marketplace/asgi_worker.py). A hub made
    afterwards (a live answer that had not watched yet) is born draining."""
    global _stopping
    _stopping = True
    if _hub is not None:
        _hub.drain()


def stopping() -> bool:
    """Whether this process was told to stop (its readiness then answers 503: views.readyz)."""
    return _stopping


def hub() -> Hub:
    """This process's hub (made on first use, in the event loop that serves the API)."""
    global _hub
    if _hub is None:
        _hub = Hub(settings.REDIS_URL)
        if _stopping:
            _hub.drain()
    return _hub

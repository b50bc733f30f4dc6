"""Live answers: a request's events as Server-Sent Events (`GET /svc/request/<id>/events/`),
the same events over a WebSocket (api/http/sockets.py), and `Prefer: wait=N` on intake.

They run on the ASGI event loop (marketplace/asgi.py), so a waiting client holds a queue in the
hub (api/http/hub.py) and a socket, never a thread: the sync pieces (the key, the document) run
in SYNC_THREADS for a moment and come back.

`request_stream` is what both the SSE stream and a WebSocket subscription send: first the
request as it is now (or, resuming after `Last-Event-ID`, the events kept since), then one
event per change until a terminal status; while queued, its new `queue_position` whenever it
moves; a keep-alive every SVC_SSE_KEEPALIVE_SECONDS (15), and at every RECHECK_EVERY-th one a
look at the document, so an event Redis lost delays the stream, never stalls it.
"""

import asyncio
import contextlib
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.db import close_old_connections
from prometheus_client import Gauge
from rest_framework.exceptions import Throttled

from api import events, selectors
from api.documents import QUEUED, TERMINAL
from api.errors import ApplicationError
from api.http.hub import DRAIN, RESYNC, Event, hub, id_key
from api.http.throttling import ReadThrottle, take, unauthenticated_hit
from api.services.keys import key_authenticate

logger = logging.getLogger(__name__)

POSITION_EVERY = 1.0  # seconds between looks at a queued request's place
# Every this many keep-alives a stream reads its document again (a minute by default): an
# event whose publishing failed is then sent late. (The hub asks every stream to look at
# once when its subscription comes back.) Reading it at every beat cost 1,000 streams a
# burst of 1,000 reads every 15 s, which held events back by seconds (make bench, waiting).
RECHECK_EVERY = 4
SYNC_THREADS = 16
EVENTS_PATH = re.compile(r"^/svc/request/(?P<request_id>[^/]{1,64})/events/$")
INTAKE_PATH = re.compile(r"^/svc/(?!request/|account/)[a-z0-9_-]+/[a-z0-9_-]+/$", re.IGNORECASE)
STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
WAIT = re.compile(r"^\s*wait\s*(?:=\s*(\S+))?\s*$", re.IGNORECASE)

LIVE = Gauge(
    "svc_live_answers",
    "Clients this API process holds open for a request's events, by kind (sse, websocket, wait, "
    "chat: gateway calls)",
    ["kind"],
    multiprocess_mode="livesum",
)

_threads = ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="live-sync")


async def run_sync(fn: Callable, *args, **kwargs):
    """`fn` in the live answers' threads, with Django's database connections kept sound."""

    def call():
        close_old_connections()
        try:
            return fn(*args, **kwargs)
        finally:
            close_old_connections()

    return await asyncio.get_running_loop().run_in_executor(_threads, call)


# --- what is sent ----------------------------------------------------------------------------


class Snapshot:
    """A request as its GET shows it now: the document (for its queue) and the JSON text."""

    def __init__(self, request, body: dict):
        self.status = body["status"]
        self.queue = request.queue if request.kind != "deal" else None
        self.body = body
        self.data = _json(body)

    @classmethod
    def read(cls, *, request_id: str, user_id: int) -> "Snapshot | None":
        request = selectors.request_get_for_user(request_id=request_id, user_id=user_id)
        if request is None:
            return None
        return cls(request, selectors.request_representation(request))


def _json(body: dict) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


class Draining(Exception):
    """The process is stopping: the stream ends before its request did."""


async def request_stream(
    *, request_id: str, user_id: int, last_event_id: str | None = None
) -> AsyncIterator[Event | None]:
    """The request's events (None: a keep-alive is due); ends after a terminal status.
    ApplicationError 404 before the first event if the request is not the caller's; Draining
    when the process stops first."""
    async with hub().watch(request_id) as queue:
        now = await run_sync(Snapshot.read, request_id=request_id, user_id=user_id)
        if now is None:
            raise ApplicationError("not_found", "no such request", status=404)
        sent_id = last_event_id if last_event_id and STREAM_ID.match(last_event_id) else None
        replay = await hub().history(request_id, sent_id) if sent_id else None
        if replay is None:  # a first connection, or what was missed is no longer kept
            sent_id = await hub().last_id(request_id)
            replay = [Event(sent_id, "request", now.data)]
        last = now
        if not replay and now.status not in TERMINAL:
            yield None  # resumed with nothing missed: the answer starts now all the same
        for event in replay:
            yield event
            sent_id = event.id or sent_id
            if event.kind == "request":
                last = _state(event, queue=now.queue)
        if last.status in TERMINAL:
            return
        loop = asyncio.get_running_loop()
        keepalive = settings.SVC_SSE_KEEPALIVE_SECONDS
        # Streams opened together must not all beat (and read their documents) together.
        keepalive_at = loop.time() + keepalive * random.uniform(0.5, 1.0)
        beats = 0
        while True:
            timeout = keepalive_at - loop.time()
            if last.status == QUEUED and last.queue:
                timeout = min(timeout, POSITION_EVERY)
            try:
                event = await asyncio.wait_for(queue.get(), max(timeout, 0))
            except TimeoutError:
                event = None
            if event is None:
                if loop.time() >= keepalive_at:
                    keepalive_at = loop.time() + keepalive
                    beats += 1
                    yield None
                    if beats % RECHECK_EVERY:
                        continue
                    event = RESYNC  # and look at the document: an event may have been lost
                else:  # the place in the queue is due (or the timer woke a moment early)
                    if last.status == QUEUED and last.queue:
                        moved = await _moved(request_id, last)
                        if moved is not None:
                            last = moved
                            yield Event(None, "request", moved.data)
                    continue
            if event is DRAIN:
                raise Draining
            if event is RESYNC:
                now = await run_sync(Snapshot.read, request_id=request_id, user_id=user_id)
                if now is None:
                    return
                if _changed(last, now):
                    last = now
                    yield Event(None, "request", now.data)
            else:
                if event.kind == events.CHUNK:
                    continue  # a gateway call's output: its own answer relays it (chat.py)
                if event.id and sent_id and id_key(event.id) <= id_key(sent_id):
                    continue  # already sent (it raced the first look)
                sent_id = event.id or sent_id
                if event.kind == "request":
                    last = _state(event, queue=last.queue)
                yield event
            if last.status in TERMINAL:
                return


def _is_end(event: Event | None) -> bool:
    return event is not None and event.kind == "request" and _state(event).status in TERMINAL


class _State:
    """What a stream remembers of the last request event it sent."""

    def __init__(self, body: dict, data: str, queue: str | None):
        self.status = body["status"]
        self.body = body
        self.data = data
        self.queue = queue


def _state(event: Event, queue: str | None = None) -> _State:
    return _State(json.loads(event.data), event.data, queue)


def _changed(last, now: Snapshot) -> bool:
    """Whether the document says more than the last event did (its place in the queue
    aside: that moves on its own, and is sent on its own)."""
    before = {**last.body, "queue_position": None}
    after = {**now.body, "queue_position": None}
    return before != after


async def _moved(request_id: str, last) -> _State | None:
    """The request's state with its new place in the queue, if it moved."""
    try:
        position = await hub().queue_position(last.queue, request_id)
    except Exception:  # a hint only; the next look may do
        return None
    if position is None or position == last.body.get("queue_position"):
        return None
    body = {**last.body, "queue_position": position}
    return _State(body, _json(body), last.queue)


# --- ASGI pieces -----------------------------------------------------------------------------


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


async def authenticate(authorization: str | None, scope=None):
    """The API key of `Authorization: Bearer <key>` (or `Token`); ApplicationError 401, or 429
    once the caller's address has failed too often (counted as the API's other views count it:
    throttling.unauthenticated_hit)."""
    scheme, _, raw = (authorization or "").strip().partition(" ")
    raw = raw.strip()
    try:
        if scheme.lower() not in ("bearer", "token") or not raw or " " in raw:
            raise ApplicationError(
                "not_authenticated", "use the header Authorization: Bearer <API key>", status=401
            )
        return await run_sync(key_authenticate, raw)
    except ApplicationError:
        if scope is not None:
            await run_sync(_count_refusal, scope)
        raise


def _count_refusal(scope) -> None:
    try:
        unauthenticated_hit(_AsgiRequest(scope))
    except Throttled as exc:
        raise ApplicationError(
            "rate_limited",
            "too many requests; retry later",
            status=429,
            retry_after=int((exc.wait or 1) + 0.999),
        ) from None


class _AsgiRequest:
    """What infra.client_ip reads of a request, from an ASGI scope."""

    def __init__(self, scope):
        host = (scope.get("client") or ("", 0))[0]
        self.META = {"REMOTE_ADDR": host}
        forwarded = _header(scope, b"x-forwarded-for")
        if forwarded is not None:
            self.META["HTTP_X_FORWARDED_FOR"] = forwarded


@contextlib.asynccontextmanager
async def admitted(key):
    """A live answer for `key`'s client: counted against the key's read rate (one per stream
    or subscription opened, SVC_READ_RATE, in Redis across processes) and against
    SVC_LIVE_PER_CLIENT held open at once in this process; 429 past either."""
    wait = await run_sync(take, scope=ReadThrottle.scope, ident=key.pk, rate=settings.SVC_READ_RATE)
    if wait is not None:
        raise ApplicationError(
            "rate_limited",
            "too many requests; retry later",
            status=429,
            retry_after=int(wait + 0.999),
        )
    user_id = key.user_id
    if _held.get(user_id, 0) >= settings.SVC_LIVE_PER_CLIENT:
        raise ApplicationError(
            "too_many_streams",
            f"at most {settings.SVC_LIVE_PER_CLIENT} live answers at once per client and server; "
            "close one, or wait for one to end",
            status=429,
            retry_after=1,
        )
    _held[user_id] = _held.get(user_id, 0) + 1
    try:
        yield
    finally:
        _held[user_id] -= 1
        if not _held[user_id]:
            del _held[user_id]


# Live answers held open now in this process, per client (admitted()).
_held: dict[int, int] = {}


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    payload = _json(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


async def _send_error(send, exc: ApplicationError) -> None:
    headers = [(b"www-authenticate", b'Bearer realm="api"')] if exc.status == 401 else []
    if exc.extra.get("retry_after"):
        headers.append((b"retry-after", str(exc.extra["retry_after"]).encode()))
    await _send_json(send, exc.status, exc.body(), headers)


def sse_frame(event: Event | None) -> bytes:
    if event is None:
        return b": keep-alive\n\n"
    head = f"id: {event.id}\n" if event.id else ""
    return f"{head}event: {event.kind}\ndata: {event.data}\n\n".encode()


async def _until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def events_app(scope, receive, send, request_id: str) -> None:
    """`GET /svc/request/<id>/events/`: the request's events as Server-Sent Events."""
    if scope["method"] not in ("GET", "HEAD"):
        await _send_json(
            send,
            405,
            {"error": {"code": "method_not_allowed", "message": "use GET"}},
            [(b"allow", b"GET")],
        )
        return
    async with contextlib.AsyncExitStack() as held:
        try:
            key = await authenticate(_header(scope, b"authorization"), scope)
            await held.enter_async_context(admitted(key))
            stream = request_stream(
                request_id=request_id,
                user_id=key.user_id,
                last_event_id=_header(scope, b"last-event-id"),
            )
            held.push_async_callback(stream.aclose)
            first = await anext(stream)
        except StopAsyncIteration:  # resumed after the last event of a request that ended
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        except ApplicationError as exc:
            await _send_error(send, exc)
            return
        except Exception as exc:
            logger.warning(
                "events stream could not start id=%s: %s", request_id, type(exc).__name__
            )
            await _send_error(
                send, ApplicationError("unavailable", "retry shortly", status=503, retry_after=1)
            )
            return
        await _stream(send, receive, stream, first)


async def _stream(send, receive, stream, first: Event | None) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"),
                (b"cache-control", b"no-store"),
                (b"x-accel-buffering", b"no"),  # a proxy must pass each event at once
            ],
        }
    )
    LIVE.labels("sse").inc()
    gone = asyncio.ensure_future(_until_disconnect(receive))
    try:
        opening = b"retry: 1000\n\n" + sse_frame(first)
        await send({"type": "http.response.body", "body": opening, "more_body": True})
        while not gone.done():
            nxt = asyncio.ensure_future(anext(stream))
            await asyncio.wait({nxt, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not nxt.done():  # the client left: stop the stream where it waits
                nxt.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await nxt  # so that closing the generator finds it at rest
                break
            try:
                event = nxt.result()
            except (StopAsyncIteration, Draining):
                break  # a stream cut by Draining is resumed elsewhere with Last-Event-ID
            await send({"type": "http.response.body", "body": sse_frame(event), "more_body": True})
        if not gone.done():
            await send({"type": "http.response.body", "body": b"", "more_body": False})
    except OSError:
        pass  # the client went away mid-send
    finally:
        LIVE.labels("sse").dec()
        gone.cancel()


def wait_seconds(prefer: str | None) -> int | None:
    """N of `Prefer: wait=N` (plain `wait`: the most), capped at SVC_MAX_WAIT_SECONDS; None
    when the header asks no wait (a preference that cannot be read is ignored: RFC 7240)."""
    if not prefer:
        return None
    for preference in prefer.split(","):
        found = WAIT.match(preference.split(";")[0])
        if found is None:
            continue
        value = found.group(1)
        if value is None:
            return settings.SVC_MAX_WAIT_SECONDS
        if value.isdigit():
            return min(int(value), settings.SVC_MAX_WAIT_SECONDS)
    return None


async def wait_app(scope, receive, send, inner: Callable[..., Awaitable], seconds: int) -> None:
    """An intake POST with `Prefer: wait=N`: the intake runs as always (`inner`, in a thread),
    then, if it created or found a request that is not over, the answer waits until it is, or
    N seconds, and carries the request as it is then."""
    start: dict = {}
    chunks: list[bytes] = []

    async def capture(message):
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            chunks.append(message.get("body", b""))

    await inner(scope, receive, capture)
    headers = list(start.get("headers", ()))
    body = b"".join(chunks)
    status = start.get("status", 500)
    replayed = any(k.lower() == b"idempotent-replayed" for k, _ in headers)
    if status in (200, 202) and not replayed:
        try:
            found = json.loads(body)
            request_id, request_status = found["id"], found["status"]
        except (ValueError, KeyError, TypeError):
            request_id = None
        if request_id and request_status not in TERMINAL:
            LIVE.labels("wait").inc()
            try:
                waited = await _wait_for_end(scope, receive, request_id, seconds)
            finally:
                LIVE.labels("wait").dec()
            if waited is None:
                return  # the client left
            body = waited.encode()
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        headers += [(b"content-length", str(len(body)).encode())]
    headers.append((b"preference-applied", f"wait={seconds}".encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _wait_for_end(scope, receive, request_id: str, seconds: int) -> str | None:
    """The request's representation once terminal or after `seconds`; None if the client
    disconnected first."""
    key = await authenticate(_header(scope, b"authorization"), scope)
    gone = asyncio.ensure_future(_until_disconnect(receive))

    async def follow() -> None:
        with contextlib.suppress(Draining):  # the process stops: answer with what there is
            async for event in request_stream(request_id=request_id, user_id=key.user_id):
                if _is_end(event):
                    return

    following = asyncio.ensure_future(follow())
    try:
        await asyncio.wait({following, gone}, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        if gone.done():
            return None
    finally:
        following.cancel()
        gone.cancel()
    now = await run_sync(Snapshot.read, request_id=request_id, user_id=key.user_id)
    return now.data if now is not None else None

"""`POST /v1/chat/completions` as served (issue 18): the intake, then the answer, on the event loop.

The intake is the sync view's (api/http/gateway.py, ChatCompletionsView, run in the WSGI
threads like every view): the key, the throttles, an Idempotency-Key, the body checked and
capped, the hold — a 202 with the request, or an error in OpenAI's shape, which goes out as
it is. Then this module answers as OpenAI does, holding no thread while the executor works:

- `stream: true`: each chunk the executor publishes (api/events.py: the call's chunk stream,
  then the channel) goes out as `data: <chat.completion.chunk>` the moment it is heard; at the
  end, with `stream_options.include_usage`, a chunk with the `usage` (and `charged`, the
  credits), then `data: [DONE]`. A call that fails before its first chunk answers an error
  status; after it, an `error` event (the SDKs raise it). Keep-alive comments while quiet.
- otherwise: the whole `chat.completion` once the request ended, with the header
  `X-Credits-Charged`.

A client that leaves cancels its request: the executor stops the upstream call, and the call
is charged what was relayed. Every answer names its request (`X-Request-Id`), which is an
ordinary one at `/svc/request/<id>/`.
"""

import asyncio
import contextlib
import json
import logging
import re

from django.conf import settings

from api import events, selectors
from api.documents import SUCCEEDED, TERMINAL
from api.http.gateway import TYPES
from api.http.hub import DRAIN, RESYNC, hub, id_key
from api.http.live import LIVE, run_sync
from api.services.cancel import request_cancel_by_client

logger = logging.getLogger(__name__)

PATH = "/v1/chat/completions"
# Request error codes → the status a gateway answer carries (others: 502, the upstream's).
STATUSES = {
    "upstream_timeout": 504,
    "timeout": 504,
    "expired": 504,
    "upstream_unreachable": 503,
    "upstream_unavailable": 503,
    "interrupted": 503,
    "unavailable": 503,
    "missing_credentials": 503,
    "bad_params": 503,
    "unknown_handler": 503,
    "canceled": 499,
}
UPSTREAM_STATUS = re.compile(r"answered HTTP (\d{3})")
PASSED_ON = (b"idempotent-replayed",)


async def chat_app(scope, receive, send, inner) -> None:
    """The intake (`inner`, the WSGI app in its threads), then the answer (module doc)."""
    start: dict = {}
    parts: list[bytes] = []

    async def capture(message):
        if message["type"] == "http.response.start":
            start.update(message)
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await inner(scope, receive, capture)
    body = b"".join(parts)
    accepted = _accepted(start.get("status"), body)
    if accepted is None:  # an error (OpenAI's shape already), or anything else: as it is
        await send({"type": "http.response.start", **_without(start, "type")})
        await send({"type": "http.response.body", "body": body})
        return
    answer = _stream if accepted["gateway"]["stream"] else _complete
    # The intake's headers that say something of the answer (a replayed Idempotency-Key).
    kept = [(k, v) for k, v in start.get("headers", ()) if k.lower() in PASSED_ON]
    LIVE.labels("chat").inc()
    try:
        await answer(send, receive, {**accepted, "_headers": kept})
    finally:
        LIVE.labels("chat").dec()


def _without(message: dict, name: str) -> dict:
    return {k: v for k, v in message.items() if k != name}


def _accepted(status, body: bytes) -> dict | None:
    if status not in (200, 202):
        return None
    try:
        found = json.loads(body)
    except ValueError:
        return None
    return found if isinstance(found, dict) and found.get("gateway") else None


# --- following a call ------------------------------------------------------------------------


async def follow(request_id: str, *, chunks: bool):
    """("chunks", [JSON text, …]) for the call's chunks (with `chunks`) as they come — those
    heard together in one list, sent in one write —, ("idle", None) while quiet, then ("end",
    the request's representation) once it ended. Chunks published before this began come from
    the call's chunk stream, the rest from the hub, each once (by its stream id)."""
    async with hub().watch(request_id) as queue:
        last = "0-0"

        async def backlog() -> list[str]:
            nonlocal last
            if not chunks:
                return []
            entries = await hub().client.xrange(events.chunk_key(request_id), min=f"({last}")
            found = []
            for stream_id, fields in entries:
                last = stream_id.decode() if isinstance(stream_id, bytes) else stream_id
                data = fields.get(b"d") or fields.get("d")
                found.append(data.decode() if isinstance(data, bytes) else data)
            return found

        if found := await backlog():
            yield "chunks", found
        now = await run_sync(_representation, request_id)
        while now["status"] not in TERMINAL:
            try:
                heard = [await asyncio.wait_for(queue.get(), settings.SVC_SSE_KEEPALIVE_SECONDS)]
            except TimeoutError:
                yield "idle", None
                heard = [RESYNC]  # and look: an event Redis lost must not stall the answer
            while not queue.empty():
                heard.append(queue.get_nowait())
            found, look = [], False
            for event in heard:
                if event is DRAIN:
                    continue  # the process stops: a call's answer cannot resume elsewhere
                if event is RESYNC:  # what the hub missed, in order, before what it heard since
                    found += await backlog()
                    look = True
                elif event.kind == events.CHUNK:
                    if chunks and id_key(event.id) > id_key(last):
                        last = event.id
                        found.append(event.data)
                elif event.kind == events.REQUEST:
                    body = json.loads(event.data)
                    if body["status"] in TERMINAL:
                        now = body
            if look and now["status"] not in TERMINAL:
                now = await run_sync(_representation, request_id)
            if found:
                yield "chunks", found
        if found := await backlog():  # any the hub had not heard (a subscription late)
            yield "chunks", found
        yield "end", now


def _representation(request_id: str) -> dict:
    request = selectors.request_get(request_id=request_id)
    return selectors.request_representation(request)


async def _until_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _cancel(request_id: str) -> None:
    request = selectors.request_get(request_id=request_id)
    if request is not None and request.status not in TERMINAL:
        request_cancel_by_client(request=request)
        logger.info("chat call canceled: its client left id=%s", request_id)


async def _watched(receive, request_id: str, answering):
    """Run `answering` (a coroutine) until it ends or the client leaves (the call canceled)."""
    gone = asyncio.ensure_future(_until_disconnect(receive))
    work = asyncio.ensure_future(answering)
    try:
        await asyncio.wait({gone, work}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            await run_sync(_cancel, request_id)
            return
        work.result()
    except asyncio.CancelledError:
        # The server cut the answer (its shutdown grace ran out): the client gets no more, so
        # the call stops too, and is charged what was relayed.
        if not work.done():
            work.cancel()
        await asyncio.shield(run_sync(_cancel, request_id))
        raise
    finally:
        gone.cancel()


# --- the answers -----------------------------------------------------------------------------


def _headers(accepted: dict, *extra) -> list:
    return [
        (b"x-request-id", accepted["id"].encode()),
        (b"cache-control", b"no-store"),
        *accepted["_headers"],
        *extra,
    ]


async def _complete(send, receive, accepted: dict) -> None:
    request_id = accepted["id"]

    async def answering():
        ended = None
        async for kind, data in follow(request_id, chunks=False):
            if kind == "end":
                ended = data
        if ended["status"] == SUCCEEDED and ended["results"]:
            charged = ended["gateway"]["charged"] or 0
            payload = json.dumps(ended["results"][0], separators=(",", ":")).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": _headers(
                        accepted,
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(payload)).encode()),
                        (b"x-credits-charged", str(charged).encode()),
                    ),
                }
            )
            await send({"type": "http.response.body", "body": payload})
        else:
            await _send_error(send, accepted, ended)

    with contextlib.suppress(OSError):
        await _watched(receive, request_id, answering())


def error_of(ended: dict) -> tuple[int, dict]:
    """The status and OpenAI-shaped error of a call that did not succeed."""
    error = ended.get("error") or {"code": "failed", "message": "the call failed"}
    code = error.get("code") or "failed"
    status = STATUSES.get(code, 502)
    found = UPSTREAM_STATUS.search(error.get("message") or "")
    if code == "upstream_error" and found:
        upstream = int(found.group(1))
        if 400 <= upstream < 500 and upstream not in (401, 403, 429):
            status = 400  # the upstream refused what the client sent
    kind = TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return status, {
        "error": {"message": error.get("message", ""), "type": kind, "param": None, "code": code}
    }


async def _send_error(send, accepted: dict, ended: dict) -> None:
    status, body = error_of(ended)
    payload = json.dumps(body, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json")]
    if status == 503:
        headers.append((b"retry-after", b"1"))
    await send(
        {"type": "http.response.start", "status": status, "headers": _headers(accepted, *headers)}
    )
    await send({"type": "http.response.body", "body": payload})


async def _stream(send, receive, accepted: dict) -> None:
    request_id = accepted["id"]
    include_usage = accepted["gateway"]["include_usage"]

    async def answering():
        started = False

        async def body(data: bytes) -> None:
            nonlocal started
            if not started:
                started = True
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": _headers(
                            accepted,
                            (b"content-type", b"text/event-stream; charset=utf-8"),
                            (b"x-accel-buffering", b"no"),
                        ),
                    }
                )
            await send({"type": "http.response.body", "body": data, "more_body": True})

        async for kind, data in follow(request_id, chunks=True):
            if kind == "chunks":
                await body(b"".join(b"data: " + chunk.encode() + b"\n\n" for chunk in data))
            elif kind == "idle":
                if started:
                    await body(b": keep-alive\n\n")
            else:
                ended = data
        gateway = ended["gateway"]
        if ended["status"] != SUCCEEDED and not started:
            await _send_error(send, accepted, ended)
            return
        tail = b""
        if include_usage and gateway["usage"] is not None:
            tail += b"data: " + _usage_chunk(accepted, gateway).encode() + b"\n\n"
        if ended["status"] == SUCCEEDED:
            tail += b"data: [DONE]\n\n"
        else:
            tail += b"data: " + json.dumps(error_of(ended)[1]).encode() + b"\n\n"
        await body(tail)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    with contextlib.suppress(OSError):
        await _watched(receive, request_id, answering())


def _usage_chunk(accepted: dict, gateway: dict) -> str:
    usage = {k: v for k, v in gateway["usage"].items() if k != "source"}
    return json.dumps(
        {
            "id": gateway["completion_id"],
            "object": "chat.completion.chunk",
            "created": gateway["created"],
            "model": gateway["model"],
            "choices": [],
            "usage": usage,
            "charged": gateway["charged"],
        },
        separators=(",", ":"),
    )

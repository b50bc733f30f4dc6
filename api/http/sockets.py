"""`/ws/requests/`: a client's live view of any of its requests over one WebSocket (Channels).

The key comes in the handshake's `Authorization: Bearer <key>` header, or — for browsers,
which cannot set one — in the first message, `{"type": "auth", "key": "svc_…"}` (within
AUTH_SECONDS). Then, as JSON text frames:

    → {"type": "subscribe", "request_id": "…", "last_event_id": "…"?}
    ← {"type": "subscribed", "request_id": "…"}
    ← {"type": "event", "request_id": "…", "id": "…", "event": "request"|"child", "data": {…}}
    ← {"type": "ended", "request_id": "…"}        after its terminal status
    → {"type": "unsubscribe", "request_id": "…"}
    ← {"type": "error", "code": "…", "message": "…", "request_id"?: "…"}

The events are those of the SSE stream (api/http/live.py `request_stream`), the data the same
JSON as `GET /svc/request/<id>/`. A socket holds at most MAX_SUBSCRIPTIONS at once.
"""

import asyncio
import contextlib
import json
import logging

from channels.generic.websocket import AsyncWebsocketConsumer

from api.errors import ApplicationError
from api.http.live import LIVE, Draining, admitted, authenticate, request_stream

logger = logging.getLogger(__name__)

AUTH_SECONDS = 10.0
MAX_SUBSCRIPTIONS = 100
MAX_FRAME_BYTES = 4096
# Close codes (4000–4999 are the application's): the key was missing, wrong or too late.
CLOSE_UNAUTHENTICATED = 4401


class RequestEventsConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        self.user_id = None
        self.key = None
        self.streams: dict[str, asyncio.Task] = {}
        self.auth_timer = None
        header = None
        for name, value in self.scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
        if header is not None:
            try:
                key = await authenticate(header, self.scope)
            except ApplicationError:
                await self.close(code=CLOSE_UNAUTHENTICATED)
                return
            self.key, self.user_id = key, key.user_id
        await self.accept()
        LIVE.labels("websocket").inc()
        self.counted = True
        if self.user_id is None:
            self.auth_timer = asyncio.ensure_future(self._auth_deadline())

    async def disconnect(self, code):
        for task in self.streams.values():
            task.cancel()
        self.streams.clear()
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        if getattr(self, "counted", False):
            LIVE.labels("websocket").dec()
            self.counted = False

    async def _auth_deadline(self):
        await asyncio.sleep(AUTH_SECONDS)
        if self.user_id is None:
            await self._error("not_authenticated", 'send {"type": "auth", "key": …} first')
            await self.close(code=CLOSE_UNAUTHENTICATED)

    async def receive(self, text_data=None, bytes_data=None):
        if text_data is None or len(text_data) > MAX_FRAME_BYTES:
            await self._error(
                "invalid_message", f"send JSON text frames of at most {MAX_FRAME_BYTES} bytes"
            )
            return
        try:
            message = json.loads(text_data)
            kind = message["type"]
        except (ValueError, KeyError, TypeError):
            await self._error("invalid_message", 'a frame is a JSON object with a "type"')
            return
        if kind == "auth":
            await self._auth(message)
        elif self.user_id is None:
            await self._error("not_authenticated", 'send {"type": "auth", "key": …} first')
        elif kind == "subscribe":
            await self._subscribe(message)
        elif kind == "unsubscribe":
            task = self.streams.pop(str(message.get("request_id")), None)
            if task is not None:
                task.cancel()
        else:
            await self._error("invalid_message", "type is one of auth, subscribe, unsubscribe")

    async def _auth(self, message):
        if self.user_id is not None:
            await self._error("invalid_message", "already authenticated")
            return
        key = message.get("key")
        try:
            found = await authenticate(
                f"Bearer {key}" if isinstance(key, str) else None, self.scope
            )
        except ApplicationError as exc:
            await self._error(exc.code, exc.message)
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.key, self.user_id = found, found.user_id
        if self.auth_timer is not None:
            self.auth_timer.cancel()
        await self.send(text_data=json.dumps({"type": "authenticated"}))

    async def _subscribe(self, message):
        request_id = message.get("request_id")
        last_event_id = message.get("last_event_id")
        if not isinstance(request_id, str) or not request_id or len(request_id) > 64:
            await self._error("invalid_message", "request_id: the id of one of your requests")
            return
        if request_id in self.streams:
            return
        if len(self.streams) >= MAX_SUBSCRIPTIONS:
            await self._error(
                "too_many_subscriptions",
                f"at most {MAX_SUBSCRIPTIONS} at once; unsubscribe first",
                request_id=request_id,
            )
            return
        stream = request_stream(
            request_id=request_id,
            user_id=self.user_id,
            last_event_id=last_event_id if isinstance(last_event_id, str) else None,
        )
        self.streams[request_id] = asyncio.ensure_future(self._follow(request_id, stream))

    async def _follow(self, request_id: str, stream):
        try:
            async with admitted(self.key):
                await self._relay(request_id, stream)
        except ApplicationError as exc:
            await self._error(exc.code, exc.message, request_id=request_id)
        except Draining:
            await self._error(
                "draining", "this server is stopping; connect again", request_id=request_id
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("websocket stream failed id=%s: %s", request_id, type(exc).__name__)
            await self._error(
                "unavailable", "the stream broke; subscribe again", request_id=request_id
            )
        finally:
            self.streams.pop(request_id, None)
            with contextlib.suppress(Exception):
                await stream.aclose()

    async def _relay(self, request_id: str, stream) -> None:
        subscribed = False
        async for event in stream:
            if not subscribed:
                subscribed = True
                await self.send(
                    text_data=json.dumps({"type": "subscribed", "request_id": request_id})
                )
            if event is None:
                continue  # WebSocket pings keep the connection; nothing to send
            await self.send(
                text_data=(
                    f'{{"type":"event","request_id":{json.dumps(request_id)},'
                    f'"id":{json.dumps(event.id)},"event":{json.dumps(event.kind)},'
                    f'"data":{event.data}}}'
                )
            )
        await self.send(text_data=json.dumps({"type": "ended", "request_id": request_id}))

    async def _error(self, code: str, message: str, **extra):
        with contextlib.suppress(Exception):
            await self.send(
                text_data=json.dumps({"type": "error", "code": code, "message": message, **extra})
            )

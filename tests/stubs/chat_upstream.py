"""A streaming OpenAI-compatible chat upstream on 127.0.0.1, for gateway tests and benchmarks.

The http.server stubs (server.py) answer whole bodies; a gateway that relays streams needs an
upstream that sends SSE chunks over time, stops mid-stream, hangs, and notices when its client
goes away. This one is uvicorn serving a small ASGI app in a thread with its own event loop.
Tests set its attributes (`reply`, `token_delay`, `break_after`, `hang_after`, `status`, …);
each request reads them when it arrives, and `reset()` restores the defaults.

Run as a process of its own (the gateway benchmark, benchmarks/gateway.py), it serves until
SIGTERM or Ctrl-C:

    python -m tests.stubs.chat_upstream --port 8124 --token-delay 0.01 --stamp
"""

import argparse
import asyncio
import contextlib
import itertools
import json
import logging
import re
import signal
import socket
import threading
import time

import uvicorn

DEFAULT_API_KEY = "sk-chat-stub-0123456789"

# Tokens each message adds to prompt_tokens besides its text (its role and framing).
PROMPT_OVERHEAD = 3

# Seconds start() waits for uvicorn to listen, and stop() for its thread to end.
START_TIMEOUT = 10
STOP_TIMEOUT = 5

_FIRST = asyncio.FIRST_COMPLETED

_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]

_TOKEN = re.compile(r"\s*\S+")


def stub_tokens(text: str) -> list[str]:
    """The stub's tokeniser: each word with the whitespace before it is one token."""
    return _TOKEN.findall(text)


class _Abort(Exception):
    """Raised by the app to make uvicorn close the connection in the middle of a body."""


class _QuietAbort(logging.Filter):
    # uvicorn logs every exception an app raises with a traceback; ours are on purpose.
    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Abort))


logging.getLogger("uvicorn.error").addFilter(_QuietAbort())


class ChatUpstream:
    def __init__(self, port: int = 0):
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.streams_open = 0
        self.reset()
        # Bound now so that `url` is known before start(); uvicorn listens on it.
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", port))
        config = uvicorn.Config(
            self._app,
            interface="asgi3",
            lifespan="off",
            ws="none",
            log_level="warning",
            # No dictConfig: it would replace the test process's logging handlers.
            log_config=None,
            access_log=False,
            proxy_headers=False,
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )
        # Set on the server's loop by stop(), so that hanging or slow streams end at once.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None

    def reset(self) -> None:
        self.api_key = DEFAULT_API_KEY
        self.reply: str | None = None  # None: "echo: <last user message>"
        self.token_delay = 0.0  # seconds between token chunks
        self.first_token_delay = 0.0  # seconds before the first token chunk
        self.break_after: int | None = None  # close the connection after that many tokens
        self.hang_after: int | None = None  # send nothing after that many tokens
        self.status: int | None = None  # answer this status with an error body instead
        # Added to the prompt_tokens it reports: a tokenizer that counts more than a gateway's
        # estimate (an overrun of the hold).
        self.extra_prompt_tokens = 0
        # Each content chunk carries "x_sent": the wall clock (time.time()) as it is sent, for
        # a client to read how late it arrived (a gateway passes unknown fields through).
        self.stamp = False
        self.requests: list[dict] = []
        self.disconnects = 0
        self.disconnected = threading.Event()

    @property
    def url(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}/v1"

    @property
    def calls(self) -> int:
        return len(self.requests)

    def start(self) -> "ChatUpstream":
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the chat upstream did not start (see uvicorn's log)")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has closed already
                self._loop.call_soon_threadsafe(self._stopping.set)
        self._thread.join(STOP_TIMEOUT)
        self._socket.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    async def _app(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        if self._loop is None:
            # The event first: stop() uses it once it sees the loop.
            self._stopping = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        raw = await _read_body(receive)
        if raw is None:
            return  # the client left before it finished sending
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        with self._lock:
            self.requests.append({"headers": headers, "json": body})

        given = headers.get("authorization", "").removeprefix("Bearer ")
        if self.status is not None:
            status = self.status
            await _error(send, status, f"scripted status {status}", "server_error")
        elif scope["method"] != "POST" or scope["path"] != "/v1/chat/completions":
            message = f"Unknown request URL: {scope['method']} {scope['path']}"
            await _error(send, 404, message, "unknown_url")
        elif given != self.api_key:
            # Like OpenAI, quote the key back: a gateway must keep it out of its errors.
            await _error(send, 401, f"Incorrect API key provided: {given}", "invalid_api_key")
        elif not isinstance(body, dict):
            await _error(send, 400, "We could not parse the JSON body of your request.", None)
        elif body.get("stream"):
            await self._stream(body, receive, send)
        else:
            await self._complete(body, send)

    def _answer(self, body: dict) -> tuple[list[str], str, dict]:
        """The reply's tokens, the finish reason and the usage for a request body."""
        messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
        if self.reply is not None:
            reply = self.reply
        else:
            users = [m for m in messages if m.get("role") == "user"]
            reply = "echo: " + (_text(users[-1].get("content")) if users else "")
        tokens = stub_tokens(reply)
        limit = body.get("max_completion_tokens")
        if limit is None:
            limit = body.get("max_tokens")
        finish_reason = "stop"
        if isinstance(limit, int) and len(tokens) > limit:
            tokens, finish_reason = tokens[:limit], "length"
        prompt = sum(len(stub_tokens(_text(m.get("content")))) + PROMPT_OVERHEAD for m in messages)
        prompt += self.extra_prompt_tokens
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": len(tokens),
            "total_tokens": prompt + len(tokens),
        }
        return tokens, finish_reason, usage

    async def _complete(self, body: dict, send) -> None:
        tokens, finish_reason, usage = self._answer(body)
        answer = {
            "id": f"chatcmpl-stub-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(tokens)},
                    "finish_reason": finish_reason,
                }
            ],
            "usage": usage,
        }
        await _json(send, 200, answer)

    async def _stream(self, body: dict, receive, send) -> None:
        # Watched all along: the client may leave at any point, and stop() ends every stream.
        gone = asyncio.ensure_future(_wait_for_disconnect(receive))
        stopped = asyncio.ensure_future(self._stopping.wait())
        with self._lock:
            self.streams_open += 1
        completed = False
        try:
            completed = await self._send_stream(body, send, gone, stopped)
        finally:
            with self._lock:
                self.streams_open -= 1
                if not completed and gone.done():
                    self.disconnects += 1
                    self.disconnected.set()
            gone.cancel()
            stopped.cancel()

    async def _send_stream(self, body: dict, send, gone, stopped) -> bool:
        """Sends the chunks as scripted; true if the stream got to its end ([DONE])."""
        tokens, finish_reason, usage = self._answer(body)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        break_after, hang_after = self.break_after, self.hang_after
        delay, first_delay = self.token_delay, self.first_token_delay
        stamp = self.stamp
        head = {
            "id": f"chatcmpl-stub-{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body.get("model"),
        }

        def frame(delta: dict, finish: str | None = None) -> bytes:
            chunk = {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            if include_usage:
                chunk["usage"] = None  # OpenAI's chunks carry it, empty until the last one
            if stamp and delta.get("content"):
                chunk["x_sent"] = time.time()
            return _sse(chunk)

        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        await _more(send, frame({"role": "assistant", "content": ""}))
        # One step before each token, and one before the final chunks.
        for sent in range(len(tokens) + 1):
            if sent == break_after:
                raise _Abort
            if sent == hang_after:
                await asyncio.wait((gone, stopped), return_when=_FIRST)
            elif sent < len(tokens):
                pause = first_delay if sent == 0 else delay
                if pause:
                    await asyncio.wait((gone, stopped), timeout=pause, return_when=_FIRST)
            if stopped.done():
                raise _Abort
            # Seen only when the loop has run since the client left: one that leaves a stream
            # sent without pauses may find it sent (into its closed socket) to the end.
            if gone.done():
                return False
            if sent < len(tokens):
                await _more(send, frame({"content": tokens[sent]}))
        await _more(send, frame({}, finish_reason))
        if include_usage:
            await _more(send, _sse({**head, "choices": [], "usage": usage}))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
        return True


async def _read_body(receive) -> bytes | None:
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def _wait_for_disconnect(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _sse(chunk: dict) -> bytes:
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


async def _more(send, data: bytes) -> None:
    await send({"type": "http.response.body", "body": data, "more_body": True})


async def _json(send, status: int, data) -> None:
    body = json.dumps(data).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send, status: int, message: str, code: str | None) -> None:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": code}
    await _json(send, status, {"error": error})


def _text(content) -> str:
    """A message's text: `content` is a string or a list of parts ({"type": "text", …})."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A streaming OpenAI-compatible chat upstream.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--api-key", default=DEFAULT_API_KEY)
    parser.add_argument("--reply", default=None, help='the reply (default: "echo: <message>")')
    parser.add_argument("--token-delay", type=float, default=0.0, help="seconds between tokens")
    parser.add_argument("--first-token-delay", type=float, default=0.0)
    parser.add_argument("--stamp", action="store_true", help='"x_sent" in each content chunk')
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    upstream = ChatUpstream(port=args.port)
    upstream.api_key = args.api_key
    upstream.reply = args.reply
    upstream.token_delay = args.token_delay
    upstream.first_token_delay = args.first_token_delay
    upstream.stamp = args.stamp
    with upstream:
        print(f"chat upstream listening on {upstream.url}", flush=True)
        while not stop.wait(1.0):
            pass
    print(f"chat upstream stopped, {upstream.streams_open} streams open", flush=True)


if __name__ == "__main__":
    main()

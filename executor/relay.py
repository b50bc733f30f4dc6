"""A gateway call's output on its way to the client (issue 18), and the count of what went.

The `openai.chat` handler hands every chunk the upstream streams to the call's `ChatRelay`:
it rewrites the chunk as the client's (our completion id, the model's exposed name), counts
the chunks that carry output, remembers the upstream's `usage`, assembles the whole completion
(the request's result), and — when the client streams — publishes the chunk for the API to
relay (api/events.py: one Redis script for the chunks that arrived together, on the
executor's loop, in a task of its own so the handler reads on meanwhile).

What the call is charged follows from it (api/chat.py): the upstream's usage when it said, else
the input as counted at intake and the output chunks relayed. The job closes the relay when the
call ends however it ends (a broken stream, a client that left, a timeout): from then on
nothing more is published, so what is charged is what was sent.
"""

import asyncio
import json
import logging
import threading

from prometheus_client import Counter

from api import events
from api.chat import completion_id, count_text_tokens
from executor import runtime

logger = logging.getLogger(__name__)

# Seconds the job waits for a call's last chunks to be published before it ends the call.
DRAIN_TIMEOUT = 5.0

CHUNKS_LOST = Counter(
    "svc_gateway_chunks_unpublished_total",
    "Chunks of streamed gateway calls that could not be published (Redis failed): their "
    "clients miss them",
)


def _json(value) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class ChatRelay:
    def __init__(self, request_id: str, *, model: str, publish: bool, created: int):
        self.request_id = request_id
        self.model = model
        self.completion_id = completion_id(request_id)
        self.created = created
        self.publish = publish
        self.relayed = 0  # chunks with output (content, a tool call) sent on
        self.usage: dict | None = None
        self.finished = False  # the upstream said [DONE]
        self._choices: dict[int, dict] = {}
        self._lock = threading.Lock()  # the job's thread closes; the loop relays
        self._closed = False
        self._publisher = None
        self._pending: list[str] = []
        self._flusher: asyncio.Task | None = None

    async def chunk(self, chunk: dict) -> None:
        """One chunk of the upstream's stream (already parsed)."""
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = chunk.get("choices")
        if not choices:  # the usage chunk (or a keep-alive): the API sends its own at the end
            return
        output = any(_has_output(choice.get("delta")) for choice in choices)
        with self._lock:
            if self._closed:
                return
            if output:
                self.relayed += 1
        for choice in choices:
            self._assemble(choice)
        if self.publish:
            chunk = {
                **chunk,
                "id": self.completion_id,
                "model": self.model,
                "created": self.created,
            }
            chunk.pop("usage", None)
            self._pending.append(_json(chunk))
            if self._flusher is None or self._flusher.done():
                self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        """Publish what is pending, in order, until nothing is: the chunks that arrived while
        a publish was on its way go together in the next (one round trip for many when the
        upstream sends fast; a lone chunk goes at once). Its own task: the handler reads on."""
        if self._publisher is None:
            self._publisher = events.chunk_publisher(runtime.redis_client())
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._publisher(self.request_id, batch)
            except Exception as exc:  # the call goes on; the client misses these chunks
                CHUNKS_LOST.inc(len(batch))
                logger.warning(
                    "chunks not published id=%s: %s", self.request_id, type(exc).__name__
                )

    async def drain(self) -> None:
        """Wait until every chunk handed over is published (before the call may end: its end
        must follow its chunks on the channel)."""
        while self._flusher is not None and not self._flusher.done():
            await asyncio.shield(self._flusher)

    def drained(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """`drain` from the job's thread, however the call ended (a cancel, a failure)."""
        if self._flusher is None or self._flusher.done():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.drain(), runtime.loop()).result(timeout)
        except Exception as exc:  # the call ends all the same
            logger.warning("chunks still pending id=%s: %s", self.request_id, type(exc).__name__)

    def answer(self, completion: dict) -> dict:
        """A whole (non-streamed) completion from the upstream, as the client's."""
        usage = completion.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        choices = completion.get("choices") or []
        with self._lock:  # counted as text when the upstream gave no usage
            self.relayed = sum(_message_tokens(c.get("message")) for c in choices)
        self.finished = True
        return {
            **completion,
            "id": self.completion_id,
            "model": self.model,
            "created": self.created,
        }

    def close(self) -> int:
        """Nothing more is sent; returns the output chunks that were."""
        with self._lock:
            self._closed = True
            return self.relayed

    def _assemble(self, choice: dict) -> None:
        index = choice.get("index", 0)
        seen = self._choices.setdefault(
            index, {"index": index, "role": "assistant", "content": [], "finish_reason": None}
        )
        delta = choice.get("delta") or {}
        if isinstance(delta.get("role"), str):
            seen["role"] = delta["role"]
        if isinstance(delta.get("content"), str):
            seen["content"].append(delta["content"])
        for call in delta.get("tool_calls") or ():
            calls = seen.setdefault("tool_calls", {})
            entry = calls.setdefault(
                call.get("index", 0), {"id": None, "type": "function", "function": {}}
            )
            entry["id"] = call.get("id") or entry["id"]
            function = call.get("function") or {}
            if function.get("name"):
                entry["function"]["name"] = function["name"]
            if isinstance(function.get("arguments"), str):  # few and short: joined as they come
                args = entry["function"].get("arguments", "")
                entry["function"]["arguments"] = args + function["arguments"]
        if choice.get("finish_reason"):
            seen["finish_reason"] = choice["finish_reason"]

    def completion(self) -> dict:
        """The streamed completion as one chat.completion (the request's result)."""
        choices = []
        for index in sorted(self._choices):
            seen = self._choices[index]
            message = {"role": seen["role"], "content": "".join(seen["content"])}
            if seen.get("tool_calls"):
                message["tool_calls"] = [seen["tool_calls"][i] for i in sorted(seen["tool_calls"])]
            choices.append(
                {"index": index, "message": message, "finish_reason": seen["finish_reason"]}
            )
        body = {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.usage is not None:
            body["usage"] = self.usage
        return body


def _message_tokens(message) -> int:
    if not isinstance(message, dict):
        return 0
    content = message.get("content")
    tokens = count_text_tokens(content) if isinstance(content, str) else 0
    if message.get("tool_calls"):
        tokens += count_text_tokens(_json(message["tool_calls"]))
    return tokens


def _has_output(part) -> bool:
    return isinstance(part, dict) and bool(part.get("content") or part.get("tool_calls"))

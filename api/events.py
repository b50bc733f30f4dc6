"""Events about requests: each change to a request — a status, a try of its handler, a cancel
asked, an item of its deal — is published by the process that made it (API, executor, recon),
so that every API process's live answers (SSE, WebSocket, `Prefer: wait`) see it.

    request_changed(request)      after the change is in MongoDB (the record)

Per request, Redis keeps a Stream `svc:events:<id>` of its recent events (what a client resuming
with `Last-Event-ID` missed; a day, at most STREAM_LENGTH entries), and every event is also
PUBLISHed on the one channel `svc:events`, which each API process subscribes to once
(api/http/hub.py). One script does both: one round trip per change.

An event is (stream id, type, data): type `request` with the request's representation (the same
JSON as `GET /svc/request/<id>/`), or `child` on a deal's stream with its item's representation.
Publishing is best effort: MongoDB has the change already, and the live answers look at the
document again whenever they have heard nothing for a while (or Redis came back), so a lost
event delays an answer and loses nothing.
"""

import json
import logging

from prometheus_client import Counter

from api.documents import ServiceRequest
from api.shapes import request_repr
from infra.stores import redis_connection

logger = logging.getLogger(__name__)

CHANNEL = "svc:events"
STREAM_PREFIX = "svc:events:"
STREAM_LENGTH = 200
STREAM_SECONDS = 86400
REQUEST, CHILD = "request", "child"

EVENTS_PUBLISHED = Counter(
    "svc_request_events_total",
    "Request events published for live answers (SSE, WebSocket, Prefer: wait), by outcome",
    ["outcome"],
)

# KEYS: the request's stream[, its deal's stream]. ARGV: the request id, its data, the deal's
# id, the streams' length and seconds, the channel. Each stream gets the event; the channel
# gets "<request id> <stream id> <type> <data>" (the id first: a process parses only those it
# watches).
_PUBLISH = """
local function add(key, owner, kind)
  local id = redis.call('XADD', key, 'MAXLEN', '~', ARGV[4], '*', 't', kind, 'd', ARGV[2])
  redis.call('EXPIRE', key, ARGV[5])
  redis.call('PUBLISH', ARGV[6], owner .. ' ' .. id .. ' ' .. kind .. ' ' .. ARGV[2])
  return id
end
local id = add(KEYS[1], ARGV[1], 'request')
if KEYS[2] then add(KEYS[2], ARGV[3], 'child') end
return id
"""


# A gateway call's chunks (issue 18), published by its executor as the upstream streams them:
# every one is kept in the Stream `svc:chat:<id>` (for a client that comes late or again: an
# Idempotency-Key replay), for CHUNKS_SECONDS after the last, and PUBLISHed on CHANNEL with type
# `chunk` — after the request's own events on the same channel, in order: an API process hears
# a call's last chunk before the status that ends it. The chunks that arrived together go in
# one script call. KEYS: the chunk stream. ARGV: the request id, the seconds, the channel, then
# each chunk's JSON.
CHUNK, CHUNK_PREFIX, CHUNKS_SECONDS = "chunk", "svc:chat:", 300
_PUBLISH_CHUNKS = """
for i = 4, #ARGV do
  local id = redis.call('XADD', KEYS[1], '*', 'd', ARGV[i])
  redis.call('PUBLISH', ARGV[3], ARGV[1] .. ' ' .. id .. ' chunk ' .. ARGV[i])
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return #ARGV - 3
"""


def chunk_key(request_id: str) -> str:
    return f"{CHUNK_PREFIX}{request_id}"


def chunk_publisher(client):
    """`await publish(request_id, [data, …])` on an asyncio Redis `client` (the executor's
    loop): the chunks in order, in one round trip."""
    script = client.register_script(_PUBLISH_CHUNKS)

    async def publish(request_id: str, chunks: list[str]) -> None:
        await script(
            keys=[chunk_key(request_id)], args=[request_id, CHUNKS_SECONDS, CHANNEL, *chunks]
        )

    return publish


def chunks_relayed(request_id: str) -> int:
    """How many chunks with output (content, a tool call) a gateway call has published, as its
    chunk stream keeps them: what its client was sent, for a call whose executor was lost."""
    relayed = 0
    for _, fields in redis_connection().xrange(chunk_key(request_id)):
        try:
            chunk = json.loads(fields.get(b"d") or b"{}")
        except ValueError:
            continue
        deltas = [choice.get("delta") or {} for choice in chunk.get("choices") or ()]
        if any(delta.get("content") or delta.get("tool_calls") for delta in deltas):
            relayed += 1
    return relayed


def stream_key(request_id: str) -> str:
    return f"{STREAM_PREFIX}{request_id}"


def request_changed(request: ServiceRequest, children: list[ServiceRequest] | None = None) -> None:
    """Publish the request's representation as it is now (after a change was stored); a deal's
    with its `children`, as its GET shows it."""
    data = json.dumps(request_repr(request, children), separators=(",", ":"), ensure_ascii=False)
    keys = [stream_key(request.id)]
    if request.parent:
        keys.append(stream_key(request.parent))
    try:
        redis_connection().register_script(_PUBLISH)(
            keys=keys,
            args=[
                request.id,
                data,
                request.parent or "",
                STREAM_LENGTH,
                STREAM_SECONDS,
                CHANNEL,
            ],
        )
    except Exception as exc:  # the change is stored; a live answer looks at the document again
        EVENTS_PUBLISHED.labels("error").inc()
        logger.warning("request event not published id=%s: %s", request.id, type(exc).__name__)
        return
    EVENTS_PUBLISHED.labels("published").inc()


def parse_message(message: bytes | str) -> tuple[str, str, str, str]:
    """(request id, stream id, type, data) of a message on CHANNEL."""
    text = message.decode() if isinstance(message, bytes) else message
    request_id, stream_id, kind, data = text.split(" ", 3)
    return request_id, stream_id, kind, data


def parse_entry(fields: dict) -> tuple[str, str]:
    """(type, data) of a stream entry."""
    kind = fields.get(b"t") or fields.get("t")
    data = fields.get(b"d") or fields.get("d")
    return (
        kind.decode() if isinstance(kind, bytes) else kind,
        data.decode() if isinstance(data, bytes) else data,
    )

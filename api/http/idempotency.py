"""`Idempotency-Key` on every client POST, with Stripe's semantics.

A client that sends `Idempotency-Key: <1–255 printable ASCII characters>` on a POST may send
the same POST again (after a timeout, a dropped connection, a crashed worker) and get the
first answer back, status included, with `Idempotent-Replayed: true`: the view does not run
again, so nothing is charged or created twice. The key belongs to the client that used it
(two clients never see each other's keys) and is kept SVC_IDEMPOTENCY_TTL seconds (24 h).

- same key, same request → the stored answer (the view is not run);
- same key, another request (method, path, query string — it carries `webhook=` — or body;
  a JSON body is compared as canonical JSON, so key order and spacing do not matter) →
  `409 idempotency_conflict`;
- same key while its first request is still running → `409 idempotency_in_progress`
  (`Retry-After: 1`);
- a malformed key → `400 invalid_idempotency_key`. Without the header nothing changes.

What is kept: answers the domain decided — 2xx, `402` (insufficient credits) and `409`
(e.g. `not_cancelable`). They are the outcome of that request: a retry must hear the same,
not run again once the balance or the request has changed (Stripe keeps a declined charge
the same way; a client that tops up and tries again sends a new key). What is not kept:
answers where nothing ran — 400 (validation), 401, 403, 404, 405, 413, 415, 429 — and every
5xx (and an uncaught exception): the key is released at once, so the client corrects the
body, waits out the rate limit or the outage, and retries with the same key.

How: the key is claimed atomically in Redis (one script: read, or set "in progress" if
absent) for IN_PROGRESS_SECONDS (a minute), so a process that dies mid-request frees the key
soon instead of locking it for a day. The answer then replaces the claim for the full TTL,
in two Redis round trips per POST in all. Nothing secret reaches Redis in plaintext
(the answer to `POST /svc/account/keys/` holds a new API key): the Redis key is an HMAC of
the client and the Idempotency-Key, the request fingerprint an HMAC too, and the answer is
encrypted with AES-GCM bound to both, with keys derived (HKDF) from SECRET_KEY. Rotating
SECRET_KEY thus forgets every stored key; they expire on their own.

The mixin runs after authentication, permissions and throttles (`super().initial()`), so a
replay counts against the client's rates like any request, and a 401 or 429 never claims a
key.
"""

import hashlib
import hmac
import io
import json
import logging
import os
import re
from dataclasses import dataclass
from functools import lru_cache

import redis.exceptions
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.http import HttpResponse
from prometheus_client import Counter

from api.errors import ApplicationError
from api.http.body import max_body_bytes
from infra.stores import redis_connection

logger = logging.getLogger(__name__)

HEADER = "HTTP_IDEMPOTENCY_KEY"
# Stripe's limit: up to 255 characters; printable ASCII only, so the key reads the same in
# every client library and log.
VALID_KEY = re.compile(r"[\x20-\x7e]{1,255}")
# Where the keys live in Redis: the suffix is an HMAC of the client and the key.
REDIS_PREFIX = "svc:idempotency:"
# Seconds a claim lasts unless the answer replaces it first: well above the longest a POST's
# view runs (an intake waits up to 5 s for a racing hold; `Prefer: wait` holds its answer
# outside the view, api/http/live.py), so a crashed process frees the key a minute later.
IN_PROGRESS_SECONDS = 60
# Seconds a client told `idempotency_in_progress` should wait before it tries again.
IN_PROGRESS_RETRY_AFTER = 1
# The first byte of a stored value: a claim (request running) or a finished answer.
CLAIMED, ANSWERED = b"P", b"D"
# Bytes of an HMAC-SHA256 fingerprint and of an AES-GCM nonce, as stored.
FINGERPRINT_BYTES, NONCE_BYTES = 32, 12
# What the keys are derived for (HKDF info): changing it forgets every stored key.
KDF_INFO = b"svc idempotency v1"

OUTCOMES = Counter(
    "svc_idempotency_total",
    "POSTs with an Idempotency-Key, by outcome (stored, replayed, conflict, in_progress)",
    ["outcome"],
)

# Read the key's value; if there is none, claim the key (ARGV: claim, seconds). One round
# trip, atomic, and plain GET/SET: it runs on Redis 6.2 (no SET NX GET before 7.0).
CLAIM = """
local current = redis.call('GET', KEYS[1])
if current then return current end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
# Delete the key only while it still holds this claim (ARGV[1]).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def stored_status(status: int) -> bool:
    """Whether an answer with this status is kept (see the module's docstring for why)."""
    return 200 <= status < 300 or status in (402, 409)


@dataclass(frozen=True)
class Claim:
    redis_key: str
    fingerprint: bytes

    @property
    def marker(self) -> bytes:
        return CLAIMED + self.fingerprint


class _Replay(Exception):
    """Raised by `initial` to skip the handler; handle_exception answers its response."""

    def __init__(self, response: HttpResponse):
        self.response = response


class IdempotentPostMixin:
    """For APIViews: honours `Idempotency-Key` on POST (module docstring). Put it before
    APIView in the bases; it needs an authenticated `request.user`."""

    _idempotency_claim: Claim | None = None

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        raw_key = request.META.get(HEADER)
        if raw_key is None or request.method != "POST" or not hasattr(self, "post"):
            return
        user_id = getattr(request.user, "pk", None)
        if user_id is None:
            return
        if not VALID_KEY.fullmatch(raw_key):
            raise ApplicationError(
                "invalid_idempotency_key",
                "Idempotency-Key must be 1 to 255 printable ASCII characters",
            )
        body = _request_body(request)
        if body is None:
            return  # too large, or unreadable: the view refuses it before doing anything
        self._idempotency_claim = claim_or_replay(
            redis_key=redis_key(user_id, raw_key), fingerprint=fingerprint(request, body)
        )

    def handle_exception(self, exc):
        if isinstance(exc, _Replay):
            return exc.response
        try:
            return super().handle_exception(exc)
        except BaseException:  # uncaught: a 500 follows; the client may retry with the key
            self._idempotency_done(None)
            raise

    def finalize_response(self, request, response, *args, **kwargs):
        response = super().finalize_response(request, response, *args, **kwargs)
        if self._idempotency_claim is not None:
            self._idempotency_done(response)
        return response

    def _idempotency_done(self, response) -> None:
        claim, self._idempotency_claim = self._idempotency_claim, None
        if claim is None:
            return
        try:
            if response is not None and _keepable(response):
                answer_store(claim, response)
            else:
                claim_release(claim)
        except redis.exceptions.RedisError as exc:
            # The view has run (and may have charged): its answer goes out. The claim expires
            # on its own; until then a retry hears `idempotency_in_progress`, never a rerun.
            logger.warning("idempotency: could not settle a key: %s", type(exc).__name__)


def claim_or_replay(*, redis_key: str, fingerprint: bytes) -> Claim:
    """Claim the key for this request; if it is taken, raise what to answer instead."""
    claim = Claim(redis_key, fingerprint)
    current = _scripts(redis_connection())[0](
        keys=[redis_key], args=[claim.marker, IN_PROGRESS_SECONDS]
    )
    if current is None:
        return claim
    state, seen = current[:1], current[1 : 1 + FINGERPRINT_BYTES]
    if not hmac.compare_digest(seen, fingerprint):
        OUTCOMES.labels(outcome="conflict").inc()
        raise ApplicationError(
            "idempotency_conflict",
            "this Idempotency-Key was used with another request (method, path, query or "
            "body); use a new key for a new request",
            status=409,
        )
    if state == CLAIMED:
        OUTCOMES.labels(outcome="in_progress").inc()
        raise ApplicationError(
            "idempotency_in_progress",
            "a request with this Idempotency-Key is still being processed; retry shortly",
            status=409,
            retry_after=IN_PROGRESS_RETRY_AFTER,
        )
    OUTCOMES.labels(outcome="replayed").inc()
    raise _Replay(_replayed(claim, current[1 + FINGERPRINT_BYTES :]))


def answer_store(claim: Claim, response: HttpResponse) -> None:
    """Keep the answer, encrypted, for SVC_IDEMPOTENCY_TTL seconds (over the claim)."""
    if not getattr(response, "is_rendered", True):
        response.render()  # DRF renders it later anyway; rendering is idempotent
    head = json.dumps([response.status_code, response.get("Content-Type", "")]).encode()
    nonce = os.urandom(NONCE_BYTES)
    sealed = _keys().aead.encrypt(nonce, head + b"\n" + response.content, _aad(claim))
    value = ANSWERED + claim.fingerprint + nonce + sealed
    redis_connection().set(claim.redis_key, value, ex=settings.SVC_IDEMPOTENCY_TTL)
    OUTCOMES.labels(outcome="stored").inc()


def claim_release(claim: Claim) -> None:
    """Forget the claim (if it is still this request's), so the key can be used again."""
    _scripts(redis_connection())[1](keys=[claim.redis_key], args=[claim.marker])


def redis_key(user_id, raw_key: str) -> str:
    digest = hmac.new(_keys().mac, f"{user_id}\n{raw_key}".encode(), hashlib.sha256)
    return REDIS_PREFIX + digest.hexdigest()


def fingerprint(request, body: bytes) -> bytes:
    """HMAC of what makes two POSTs the same request: method, path, query string, body."""
    line = json.dumps([request.method, request.path, request.META.get("QUERY_STRING", "")])
    mac = hmac.new(_keys().mac, line.encode() + b"\n", hashlib.sha256)
    mac.update(_canonical(body))
    return mac.digest()


def _canonical(body: bytes) -> bytes:
    """A JSON body as canonical JSON (sorted keys, no spaces); anything else as it came."""
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):  # not JSON (or not UTF-8): compared byte for byte
        return body
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _replayed(claim: Claim, stored: bytes) -> HttpResponse:
    nonce, sealed = stored[:NONCE_BYTES], stored[NONCE_BYTES:]
    plain = _keys().aead.decrypt(nonce, sealed, _aad(claim))
    head, _, content = plain.partition(b"\n")
    status, content_type = json.loads(head)
    response = HttpResponse(content, status=status, content_type=content_type or None)
    response["Idempotent-Replayed"] = "true"
    return response


def _keepable(response) -> bool:
    return stored_status(response.status_code) and not response.streaming


def _request_body(request) -> bytes | None:
    """The body as the view will read it (api/http/body.py), or None when the view will
    refuse it unread (larger than the limit, or chunked where the server cannot de-chunk).
    A chunked body is read from the WSGI input, then put back for the view to read."""

    django_request, limit = request._request, max_body_bytes()
    meta = django_request.META
    if not meta.get("CONTENT_LENGTH") and meta.get("HTTP_TRANSFER_ENCODING"):
        if not meta.get("wsgi.input_terminated"):
            return None
        body = _read_at_most(meta["wsgi.input"], limit + 1)
        meta["wsgi.input"] = io.BytesIO(body)
        return body if len(body) <= limit else None
    try:
        if int(meta.get("CONTENT_LENGTH") or "0") > limit:
            return None
    except ValueError:
        return None
    return django_request.body


def _read_at_most(stream, size: int) -> bytes:
    chunks, read = [], 0
    while read < size:
        chunk = stream.read(size - read)
        if not chunk:
            break
        chunks.append(chunk)
        read += len(chunk)
    return b"".join(chunks)


def _aad(claim: Claim) -> bytes:
    """What the ciphertext is bound to: moved to another client's key, it does not decrypt."""
    return claim.redis_key.encode() + claim.fingerprint


@dataclass(frozen=True)
class _Keys:
    mac: bytes
    aead: AESGCM


def _keys() -> _Keys:
    return _derived(settings.SECRET_KEY)


@lru_cache(maxsize=2)
def _derived(secret_key: str) -> _Keys:
    material = HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=KDF_INFO).derive(
        secret_key.encode()
    )
    return _Keys(mac=material[:32], aead=AESGCM(material[32:]))


@lru_cache(maxsize=2)
def _scripts(client):
    return client.register_script(CLAIM), client.register_script(RELEASE)

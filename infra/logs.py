"""Structured logs: a per-request context, JSON lines, secret redaction, Fluentd.

    with logs.context(request_id=…, client=…, offer=…):   # intake, each executor job
        logger.info("…")        # the record carries request_id, client, offer (and attempt)

The context is a ContextVar, so it follows the code that runs for a request: the HTTP
request's thread, the RQ job's thread, and the coroutines the job submits to the executor's
shared loop (run_coroutine_threadsafe, tasks and asyncio.to_thread copy the caller's
context). Thread pools that do not copy it (RQ's job threads are reused) are covered by
`context()` restoring the previous value when the block ends.

Every handler gets two filters, in this order: ContextFilter (adds the context and the
process role to the record) and RedactFilter (replaces secrets in the message, its
arguments and the traceback with REDACTED). The console gets JSON lines (LOG_FORMAT=json)
or plain text; with FLUENTD_HOST set the same record dict also goes to Fluentd over the
forward protocol from a background thread (a full queue drops the oldest records: logging
never blocks a request on Fluentd).

No Django at import: gunicorn's config and manage.py use it before settings load.
"""

import contextlib
import contextvars
import json
import logging
import os
import re
import threading
import time
import traceback
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from urllib.parse import unquote

# Fields a log context may hold; the JSON record carries the ones that are set.
CONTEXT_FIELDS = ("request_id", "parent", "client", "offer", "resource", "attempt")
# What stands in for a secret.
REDACTED = "[redacted]"
# Registered secrets shorter than this are not redacted (they would mangle ordinary words).
MIN_SECRET_LENGTH = 6
# Records the Fluentd sender queues while Fluentd is away; beyond that the oldest are dropped.
FLUENTD_QUEUE_RECORDS = 10000
# Seconds the Fluentd sender waits to connect or send before it buffers and tries later.
FLUENTD_TIMEOUT = 1.0
# Seconds a stopping process waits for queued records to reach Fluentd before dropping them.
FLUENTD_CLOSE_SECONDS = 2.0

# Never changed in place: bind() and context() set a new mapping.
_EMPTY: Mapping = MappingProxyType({})
_context: contextvars.ContextVar[Mapping] = contextvars.ContextVar(
    "svc_log_context", default=_EMPTY
)
_role = "manage"  # set_role() names the process: api, executor, recon


# ---------------------------------------------------------------------------------------------
# Context


def set_role(role: str) -> None:
    """Name this process in every record: api, executor, recon, manage."""
    global _role
    _role = role


def role() -> str:
    return _role


def current() -> dict:
    """The fields of the current log context."""
    return dict(_context.get())


def bind(**fields) -> None:
    """Add fields to the current context until the enclosing `context()` block (or HTTP
    request, ContextMiddleware) ends. Outside one it does nothing: a binding at the top of a
    thread would tag every later record of that thread."""
    base = _context.get()
    if base is _EMPTY:
        _merged(base, fields)  # still refuse unknown fields
        return
    _context.set(_merged(base, fields))


@contextlib.contextmanager
def context(**fields) -> Iterator[None]:
    """A block whose records carry `fields`; the previous context comes back afterwards."""
    token = _context.set(_merged(_context.get(), fields))
    try:
        yield
    finally:
        _context.reset(token)


def _merged(base: Mapping, fields: dict) -> dict:
    unknown = set(fields) - set(CONTEXT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log context fields: {', '.join(sorted(unknown))}")
    return {**base, **{k: v for k, v in fields.items() if v is not None and v != ""}}


class ContextMiddleware:
    """Django middleware: each HTTP request starts with an empty log context, and what the
    view binds (the request id at intake) is dropped when it ends (gunicorn reuses threads)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _context.set({})  # not _EMPTY: the view may bind()
        try:
            return self.get_response(request)
        finally:
            _context.reset(token)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        fields = _context.get()
        for name in CONTEXT_FIELDS:
            if not hasattr(record, name) and name in fields:
                setattr(record, name, fields[name])
        record.role = _role
        return True


# ---------------------------------------------------------------------------------------------
# Redaction

# Secrets recognised by their shape. Each pattern's group 1 (if any) is kept.
_PATTERNS = [
    # Authorization header values: "Bearer <token>", DRF's "Token <40 hex>", "Basic <b64>".
    re.compile(r"(\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]{8,}", re.IGNORECASE),
    re.compile(r"(\bToken\s+)[0-9a-f]{40}\b"),
    # This API's own keys (api/keys.py), wherever they appear.
    re.compile(r"()\bsvc_(?:live|test)_[0-9A-Za-z]{20,}"),
    # OpenAI-style API keys (sk-…, sk-proj-…) and similar prefixed keys.
    re.compile(r"()\b(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}"),
    # Fernet keys (32 bytes, url-safe base64: 43 characters and "=") and Fernet tokens.
    re.compile(r"()(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}=(?![A-Za-z0-9_=-])"),
    re.compile(r"()\bgAAAAA[A-Za-z0-9_=-]{20,}"),
    # Passwords in URLs (scheme://user:password@host, redis://:password@host).
    re.compile(r"(://[^/\s:@]*:)[^/\s@]+(?=@)"),
    # Discord (and Slack-like) webhook tokens in URLs.
    re.compile(r"(/api/webhooks/\d+/)[A-Za-z0-9_-]+"),
    # key=value / "key": "value" pairs whose key names a secret.
    re.compile(
        r"""((?:api[_-]?key|apikey|password|passwd|secret|token|authorization)(?:[_-]?key)?"""
        r"""["']?\s*[:=]\s*["']?)(?!\[redacted\]|(?:Bearer|Basic|Token)\s)[^\s"',;&}]{4,}""",
        re.IGNORECASE,
    ),
]

_secrets: set[str] = set()
_secrets_lock = threading.Lock()
_secrets_pattern: re.Pattern | None = None


def register_secret(value) -> None:
    """Redact `value` (a string, or any nested list/dict of them) wherever it appears in a log
    record from now on: decrypted config secrets, keys read from the environment."""
    register_secrets([value])


def register_secrets(values: Iterable) -> None:
    global _secrets_pattern
    found = set()
    for value in values:
        found.update(_strings(value))
    found = {s for s in found if len(s) >= MIN_SECRET_LENGTH} - _secrets
    if not found:
        return
    with _secrets_lock:
        _secrets.update(found)
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(_secrets, key=len, reverse=True)
        _secrets_pattern = re.compile("|".join(re.escape(s) for s in ordered))


def _strings(value) -> Iterator[str]:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        yield value.strip()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield str(value)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple | set):
        for item in value:
            yield from _strings(item)


def register_env_secrets(environ=os.environ) -> None:
    """Secrets this process holds in its environment (keys, webhook URLs, DB passwords)."""
    names = ("DJANGO_SECRET_KEY", "DISCORD_WEBHOOK_URL", "SVC_ALERT_WEBHOOK_URL")
    names += ("SVC_METRICS_TOKEN",)
    values = [environ.get(name, "") for name in names]
    values += [value for name, value in environ.items() if name.endswith("_API_KEY")]
    values += environ.get("CONFIG_FERNET_KEY", "").split(",")
    for url_name in ("DATABASE_URL", "MONGO_URI", "REDIS_URL"):
        match = re.search(r"://[^/\s:@]*:([^/\s@]+)@", environ.get(url_name, ""))
        if match:  # as written in the URL, and decoded (p%40ss is p@ss to the driver)
            values += [match[1], unquote(match[1])]
    register_secrets(v for v in values if v)


def redact(text: str) -> str:
    """`text` with every registered secret and every secret-shaped value replaced."""
    if not text:
        return text
    pattern = _secrets_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    for shape in _PATTERNS:
        text = shape.sub(lambda m: m[1] + REDACTED, text)
    return text


class RedactFilter(logging.Filter):
    """Renders the message (so no argument escapes) and the traceback, then redacts both."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_svc_redacted", False):
            return True  # another handler's filter did it
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: keep what there is
            message = f"{record.msg} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        # The traceback lives on as text only: a handler formatting exc_info itself would
        # print the unredacted exception message.
        record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        record._svc_redacted = True
        return True


# ---------------------------------------------------------------------------------------------
# Formats


def record_dict(record: logging.LogRecord) -> dict:
    """One log record as the JSON line / Fluentd record: time, level, logger, message, role,
    pid, thread, the context fields that are set, and `exc` (the traceback as text)."""
    data = {
        "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname,
        "logger": record.name,
        "message": record.getMessage(),
        "role": getattr(record, "role", _role),
        "pid": record.process,
        "thread": record.threadName,
    }
    for name in CONTEXT_FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            data[name] = value
    if record.exc_text:
        data["exc"] = record.exc_text
    elif record.exc_info:
        data["exc"] = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
    if record.stack_info:
        data["stack"] = record.stack_info
    return data


# RQ's worker logs four lines per job (taken, completed, "Job OK", how long its result is
# kept); the executor's own "request started" / "request <status>" lines say the same with
# the request's context. At hundreds of jobs a second they were most of its log lines.
# RQ's other lines (start, stop, failures, suspension) stay.
RQ_JOB_LINES = frozenset(
    {
        "Worker %s: %s: %s",
        "Worker %s: %s: %s (%s)",
        "Successfully completed %s job in %ss on worker %s",
        "Successfully completed job %s in %ss on worker %s",
        "Worker %s: job %s result is kept for %s seconds",
        "Worker %s: job %s result discarded immediately",
        "Worker %s: job %s result will never expire, clean up result key manually",
    }
)


class RqJobLinesFilter(logging.Filter):
    """Drops RQ's per-job INFO lines (RQ_JOB_LINES) on the `rq.worker` logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno == logging.INFO and record.msg in RQ_JOB_LINES)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(record_dict(record), default=str, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """Human-readable lines with the request id appended when there is one."""

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(role)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "role"):
            record.role = _role
        line = super().format(record)
        ids = [f"{n}={getattr(record, n)}" for n in CONTEXT_FIELDS if hasattr(record, n)]
        if ids:
            head, sep, tail = line.partition("\n")
            line = f"{head} [{' '.join(ids)}]{sep}{tail}"
        return line


class FluentFormatter(logging.Formatter):
    """For fluent's handler: the record dict itself (msgpack'd by the sender)."""

    def format(self, record: logging.LogRecord) -> dict:
        return {
            k: v if isinstance(v, str | int | float | bool) else str(v)
            for k, v in record_dict(record).items()
        }


def fluent_handler(host: str, port: int, tag: str) -> logging.Handler:
    """fluent-logger's asynchronous handler: a background thread sends, a bounded queue
    drops the oldest records while Fluentd is away. The tag is `<tag>.<role>`."""
    from fluent import asynchandler

    class Handler(asynchandler.FluentHandler):
        def close(self):
            # fluent's close sends every queued record first, each waiting up to the timeout
            # for an unreachable Fluentd: a stopping process would hang. Give them a moment.
            sender = self._sender
            if sender is not None:
                deadline = time.monotonic() + FLUENTD_CLOSE_SECONDS
                while not sender._queue.empty() and time.monotonic() < deadline:
                    time.sleep(0.02)
                sender.close(flush=False)
            super().close()

    handler = Handler(
        f"{tag}.{_role}",
        host=host,
        port=port,
        timeout=FLUENTD_TIMEOUT,
        queue_maxsize=FLUENTD_QUEUE_RECORDS,
        queue_circular=True,
    )
    handler.setFormatter(FluentFormatter())
    return handler


def logging_config(
    *,
    log_format: str,
    level: str,
    fluentd_host: str = "",
    fluentd_port: int = 24224,
    fluentd_tag: str = "svc",
) -> dict:
    """The LOGGING dict: console (JSON or plain) and, with a host, Fluentd; both filtered."""
    if log_format not in ("json", "plain"):
        raise ValueError(f"LOG_FORMAT={log_format!r}: use json or plain")
    filters = ["context", "redact"]
    handlers = {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": log_format,
            "filters": filters,
        }
    }
    if fluentd_host:
        handlers["fluentd"] = {
            "()": "infra.logs.fluent_handler",
            "host": fluentd_host,
            "port": fluentd_port,
            "tag": fluentd_tag,
            "filters": filters,
        }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {
            "context": {"()": "infra.logs.ContextFilter"},
            "redact": {"()": "infra.logs.RedactFilter"},
            "rq_job_lines": {"()": "infra.logs.RqJobLinesFilter"},
        },
        "formatters": {
            "json": {"()": "infra.logs.JsonFormatter"},
            "plain": {"()": "infra.logs.PlainFormatter"},
        },
        "handlers": handlers,
        "root": {"handlers": list(handlers), "level": level},
        "loggers": {
            "django.request": {"level": "ERROR"},
            # A line per upstream call ("HTTP Request: POST …"): the executor logs each
            # request's outcome itself, and these lines cost it a tenth of its log time.
            "httpx": {"level": "WARNING"},
            "rq.worker": {"filters": ["rq_job_lines"]},
        },
    }

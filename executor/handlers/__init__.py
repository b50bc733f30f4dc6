"""Handler registry: every handler is one decorated function in a module of this package.

    # executor/handlers/local.py
    @handler
    def echo(call: HandlerCall) -> str:
        return call.prompt

registers `local.echo` (`<module>.<function>`). Handlers may be plain or `async def`; they
return one JSON-serialisable result per call and raise `HandlerError` for a failure the
client may see. Modules are imported on first use of the registry.

Retries, circuit breakers, fallbacks and timeouts are the executor's (executor/routes.py): a
handler declares its `resource` (and default `timeouts`), raises `HandlerError(…, retryable=True)`
for a failure worth another try (executor/upstream.py does so for timeouts, connection errors,
429 and 5xx), and reads its resolved `credentials` and `timeouts` from the `HandlerCall`.
"""

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class HandlerError(Exception):
    """A handler failure whose code and message are safe to show the client.

    `retryable`: another try may succeed (the upstream timed out, was unreachable, rate-limited
    or failed with a 5xx); those also count against the resource's circuit breaker.
    `retry_after`: seconds the upstream asked us to wait (its `Retry-After`), if it said.
    `reason`: a short label for metrics (`timeout`, `unreachable`, `429`, `5xx`, …).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        reason: str = "",
    ):
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.reason = reason or code


@dataclass(frozen=True)
class Timeouts:
    """Seconds for one try of a handler call: to connect, between bytes read, and in all.
    None: no limit of that kind (the job's own timeout, SVC_JOB_TIMEOUT, still applies)."""

    connect: float | None = None
    read: float | None = None
    total: float | None = None


@dataclass(frozen=True)
class Credentials:
    """A credential set from the `service_map` config: `kind` none | api_key | access_key.

    Its values never print: repr() names the set and kind only, so a traceback or a log line
    that shows a HandlerCall shows no secret.
    """

    name: str = ""
    kind: str = "none"
    values: dict = field(default_factory=dict, repr=False, compare=False)

    def get(self, key: str) -> str:
        return str(self.values.get(key) or "")


class UnknownHandler(LookupError):
    """No handler is registered under that id."""


@dataclass(frozen=True)
class HandlerCall:
    request_id: str
    prompt: str
    inputs: dict
    params: dict
    index: int = 0  # which of the offer's `create_qty` results this call produces
    # Resolved by the executor: the offer's credential set, else the handler's default
    # (None: the handler resolves its default itself, as when a test calls it directly).
    credentials: Credentials | None = None
    # Resolved by the executor for this try: the handler's defaults, the config's, the
    # offer's `params.timeout`, all capped by the time left before the job's deadline.
    timeouts: Timeouts = field(default_factory=Timeouts)


@dataclass(frozen=True)
class Handler:
    id: str
    func: Callable[[HandlerCall], Any]
    description: str = ""
    is_async: bool = field(default=False)
    # The shared resource (configs/resource_map.yaml) its calls count against; its RQ queue
    # is `svc-<resource>`. Defaults to the module name: `openai.chat` uses `openai`. Its
    # retry settings and circuit breaker are that resource's too.
    resource: str = ""
    # Default timeouts of one try; the `service_map` config may override them.
    timeouts: Timeouts = field(default_factory=Timeouts)


_registry: dict[str, Handler] = {}
_loaded = False


def handler(
    func=None,
    *,
    name: str | None = None,
    resource: str | None = None,
    timeouts: Timeouts | None = None,
):
    """Register `func` as `<module>.<name or function name>`, limited by `resource`."""

    def register(fn):
        module = fn.__module__.rsplit(".", 1)[-1]
        handler_id = f"{module}.{name or fn.__name__}"
        if handler_id in _registry and _registry[handler_id].func is not fn:
            raise RuntimeError(f"handler {handler_id} is registered twice")
        doc = inspect.getdoc(fn) or ""
        _registry[handler_id] = Handler(
            id=handler_id,
            func=fn,
            description=doc.splitlines()[0] if doc else "",
            is_async=inspect.iscoroutinefunction(fn),
            resource=resource or module,
            timeouts=timeouts or Timeouts(),
        )
        return fn

    return register(func) if func is not None else register


def _load() -> None:
    global _loaded
    if _loaded:
        return
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    _loaded = True


def all_handlers() -> dict[str, Handler]:
    _load()
    return dict(sorted(_registry.items()))


def get_handler(handler_id: str) -> Handler:
    _load()
    try:
        return _registry[handler_id]
    except KeyError:
        raise UnknownHandler(handler_id) from None

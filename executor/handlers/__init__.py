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

from executor.calls import Credentials, Handler, HandlerCall, HandlerError, Timeouts

__all__ = [
    "Credentials",
    "Handler",
    "HandlerCall",
    "HandlerError",
    "Timeouts",
    "UnknownHandler",
    "all_handlers",
    "get_handler",
    "handler",
]


class UnknownHandler(LookupError):
    """No handler is registered under that id."""


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

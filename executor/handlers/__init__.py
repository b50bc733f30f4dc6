"""Handler registry: every handler is one decorated function in a module of this package.

    # executor/handlers/local.py
    @handler
    def echo(call: HandlerCall) -> str:
        return call.prompt

registers `local.echo` (`<module>.<function>`). Handlers may be plain or `async def`; they
return one JSON-serialisable result per call and raise `HandlerError` for a failure the
client may see. Modules are imported on first use of the registry.
"""

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class HandlerError(Exception):
    """A handler failure whose code and message are safe to show the client."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class UnknownHandler(LookupError):
    """No handler is registered under that id."""


@dataclass(frozen=True)
class HandlerCall:
    request_id: str
    prompt: str
    inputs: dict
    params: dict
    index: int = 0  # which of the offer's `create_qty` results this call produces


@dataclass(frozen=True)
class Handler:
    id: str
    func: Callable[[HandlerCall], Any]
    description: str = ""
    is_async: bool = field(default=False)
    # The shared resource (configs/resource_map.yaml) its calls count against; its RQ queue
    # is `svc-<resource>`. Defaults to the module name: `openai.chat` uses `openai`.
    resource: str = ""


_registry: dict[str, Handler] = {}
_loaded = False


def handler(func=None, *, name: str | None = None, resource: str | None = None):
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

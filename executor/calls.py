"""What a handler call is made of: the call, its timeouts and credentials, the error a handler
raises, and the registry's record of a handler. Handler authors import these from
executor.handlers; the executor's own modules import them from here (no cycle through the
registry, which imports every handler module)."""

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
    # A gateway call (/v1/chat/completions): the client's OpenAI body as the upstream gets it
    # (the route's model is set by the handler), and its executor.relay.ChatRelay, which takes
    # the output to the client and counts it. None for every other call.
    chat: dict | None = None
    relay: Any = field(default=None, repr=False, compare=False)


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

"""POSTs to upstream HTTP services, with every failure turned into a client-safe `HandlerError`.

Shared by the network handlers so they map timeouts, connection failures and bad answers the
same way, and classify them for the executor's retries and circuit breaker
(executor/routes.py): timeouts, connection errors, 429 (with its `Retry-After`) and 5xx are
retryable; any other 4xx is a business error that fails at once. Messages never carry
credentials: header values and keys passed as `secrets` are redacted from anything the
upstream says before it reaches the client or the logs.
"""

import asyncio
import functools
from collections.abc import AsyncIterator, Iterable
from urllib.parse import urlsplit

import httpx

from executor import defaults, resilience, runtime
from executor.calls import HandlerCall, HandlerError, Timeouts

# What stands in for a secret the upstream echoed back.
REDACTED = "[redacted]"


def check_url(url, *, param: str) -> str:
    """`url` if it is an absolute http(s) URL, else a bad_params error naming `param`."""
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise HandlerError("bad_params", f"params.{param} must be an http or https URL")
    return url


def timeout_param(params: dict, default: float) -> float:
    """`params.timeout` in seconds: a positive number, or `default` when absent."""
    value = params.get("timeout", default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise HandlerError("bad_params", "params.timeout must be a positive number of seconds")
    return float(value)


def call_timeouts(call: HandlerCall, default: float) -> Timeouts:
    """The call's timeouts (resolved by the executor), with `default` seconds in all when the
    executor resolved none (a handler called directly, as in tests)."""
    total = timeout_param(call.params, default)  # checks params.timeout in any case
    timeouts = call.timeouts
    if timeouts.total is None and timeouts.read is None:
        return Timeouts(connect=timeouts.connect, read=total, total=total)
    return timeouts


async def post_json(
    url: str,
    *,
    payload,
    headers: dict,
    timeout: float | None = None,
    timeouts: Timeouts | None = None,
    auth: tuple[str, str] | None = None,
) -> httpx.Response:
    """POST `payload` as JSON within `timeouts` (connect, read, and total: the whole exchange,
    body included); `timeout` alone sets all three. Timeouts and connection failures raise
    retryable errors."""
    timeouts = timeouts or Timeouts(connect=timeout, read=timeout, total=timeout)
    per_phase = httpx.Timeout(
        timeouts.total or defaults.HTTP_TIMEOUT,
        connect=timeouts.connect or defaults.HTTP_CONNECT_TIMEOUT,
        read=timeouts.read or timeouts.total or defaults.HTTP_TIMEOUT,
    )
    try:
        async with asyncio.timeout(timeouts.total):
            return await runtime.http_client().post(
                _parsed(url), json=payload, headers=headers, timeout=per_phase, auth=auth
            )
    except (TimeoutError, httpx.TimeoutException):
        limit = f" within {timeouts.total:g}s" if timeouts.total else " in time"
        raise HandlerError(
            "upstream_timeout",
            f"the upstream did not answer{limit}",
            retryable=True,
            reason="timeout",
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        # The exception's class says enough; its text may quote the URL, which may hold secrets.
        raise HandlerError(
            "upstream_unreachable",
            f"could not reach the upstream ({type(exc).__name__})",
            retryable=True,
            reason="unreachable",
        ) from None


def _phases(timeouts: Timeouts) -> httpx.Timeout:
    return httpx.Timeout(
        timeouts.total or defaults.HTTP_TIMEOUT,
        connect=timeouts.connect or defaults.HTTP_CONNECT_TIMEOUT,
        read=timeouts.read or timeouts.total or defaults.HTTP_TIMEOUT,
    )


async def stream_sse(
    url: str, *, payload, headers: dict, timeouts: Timeouts, secrets: Iterable[str] = ()
) -> AsyncIterator[str]:
    """POST `payload` as JSON and yield the `data:` of each Server-Sent Event the upstream
    streams back (an OpenAI stream's chunks, then `[DONE]`). A non-2xx answer raises as
    `check_status` does; a connection that fails or stalls (the read timeout between
    events) raises a retryable error — the caller decides whether a retry may follow."""
    try:
        async with runtime.http_client().stream(
            "POST", _parsed(url), json=payload, headers=headers, timeout=_phases(timeouts)
        ) as response:
            if not response.is_success:
                await response.aread()
                check_status(response, secrets=secrets)
            data: list[str] = []
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif not line and data:
                    yield "\n".join(data)
                    data = []
            if data:
                yield "\n".join(data)
    except httpx.TimeoutException:
        raise HandlerError(
            "upstream_timeout", "the upstream's stream stalled", retryable=True, reason="timeout"
        ) from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise HandlerError(
            "upstream_unreachable",
            f"the upstream's stream failed ({type(exc).__name__})",
            retryable=True,
            reason="unreachable",
        ) from None


@functools.lru_cache(maxsize=1024)
def _parsed(url: str) -> httpx.URL:
    """The URL parsed once: an offer calls the same few URLs, and httpx parses a string on
    every request (a tenth of its time per call)."""
    return httpx.URL(url)


def check_status(response: httpx.Response, *, secrets: Iterable[str] = ()) -> None:
    """Raise upstream_error for a non-2xx answer, quoting the upstream's error message if any
    (redacted): retryable for 429 (with its Retry-After) and 5xx; any other status is a
    business error, not retried."""
    if response.is_success:
        return
    status = response.status_code
    message = f"the upstream answered HTTP {status}"
    detail = upstream_error_detail(response)
    if detail:
        message += f": {redact(detail, secrets)[: defaults.UPSTREAM_MESSAGE_LIMIT]}"
    if status == 429:
        raise HandlerError(
            "upstream_error",
            message,
            retryable=True,
            retry_after=resilience.parse_retry_after(response.headers.get("Retry-After")),
            reason="429",
        )
    server_side = status >= 500
    raise HandlerError(
        "upstream_error", message, retryable=server_side, reason="5xx" if server_side else "4xx"
    )


def upstream_error_detail(response: httpx.Response) -> str:
    """`error.message` (or a string `error`) from a JSON error body; "" for anything else."""
    try:
        error = response.json().get("error")
    except (ValueError, AttributeError):
        return ""
    if isinstance(error, dict):
        error = error.get("message")
    return error.strip() if isinstance(error, str) else ""


def response_json(response: httpx.Response):
    try:
        return response.json()
    except ValueError:
        raise HandlerError("bad_upstream_response", "the upstream did not answer with JSON")


def redact(text: str, secrets: Iterable[str]) -> str:
    # Longest first, so a secret that contains another is replaced whole.
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text

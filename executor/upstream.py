"""POSTs to upstream HTTP services, with every failure turned into a client-safe `HandlerError`.

Shared by the network handlers so they map timeouts, connection failures and bad answers the
same way. Messages never carry credentials: header values and keys passed as `secrets` are
redacted from anything the upstream says before it reaches the client or the logs.
"""

import asyncio
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpx

from executor import runtime
from executor.handlers import HandlerError

# Longest piece of an upstream's own error text copied into a client-visible message.
UPSTREAM_MESSAGE_LIMIT = 200
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


async def post_json(url: str, *, payload, headers: dict, timeout: float) -> httpx.Response:
    """POST `payload` as JSON; the whole exchange, body included, must finish within `timeout`."""
    try:
        async with asyncio.timeout(timeout):
            return await runtime.http_client().post(
                url, json=payload, headers=headers, timeout=timeout
            )
    except (TimeoutError, httpx.TimeoutException):
        raise HandlerError("upstream_timeout", f"the upstream did not answer within {timeout:g}s")
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        # The exception's class says enough; its text may quote the URL, which may hold secrets.
        raise HandlerError(
            "upstream_unreachable", f"could not reach the upstream ({type(exc).__name__})"
        )


def check_status(response: httpx.Response, *, secrets: Iterable[str] = ()) -> None:
    """Raise upstream_error for a non-2xx answer, quoting the upstream's error message if any."""
    if response.is_success:
        return
    message = f"the upstream answered HTTP {response.status_code}"
    detail = upstream_error_detail(response)
    if detail:
        message += f": {redact(detail, secrets)[:UPSTREAM_MESSAGE_LIMIT]}"
    raise HandlerError("upstream_error", message)


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

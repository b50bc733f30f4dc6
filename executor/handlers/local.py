"""Local handlers for demos and smoke tests; they call nothing outside the process."""

import asyncio

from executor.handlers import HandlerCall, HandlerError, handler


@handler
async def echo(call: HandlerCall) -> str:
    """Returns the rendered prompt; `params.delay_seconds` waits first, like a slow upstream."""
    delay = float(call.params.get("delay_seconds") or 0)
    if delay > 0:
        await asyncio.sleep(delay)
    return call.prompt


@handler
def fail(call: HandlerCall) -> None:
    """Always fails, for smoke-testing failure paths; `params.message` sets the message."""
    raise HandlerError(
        "handler_failed", str(call.params.get("message") or "local.fail always fails")
    )

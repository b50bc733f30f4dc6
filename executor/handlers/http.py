"""Generic HTTP upstream: POST the call as JSON to `params.url`; the result is the JSON answer."""

from executor import upstream
from executor.handlers import HandlerCall, HandlerError, handler

# Seconds the upstream has to answer, body included, unless `params.timeout` says otherwise.
DEFAULT_TIMEOUT = 30.0


@handler
async def post(call: HandlerCall):
    """POSTs {prompt, inputs, request_id, index} to `params.url`; result = the response JSON."""
    url = upstream.check_url(call.params.get("url"), param="url")
    headers = headers_param(call.params)
    timeout = upstream.timeout_param(call.params, DEFAULT_TIMEOUT)
    payload = {
        "prompt": call.prompt,
        "inputs": call.inputs,
        "request_id": call.request_id,
        "index": call.index,
    }
    response = await upstream.post_json(url, payload=payload, headers=headers, timeout=timeout)
    # Header values often carry tokens: keep them out of any quoted upstream message.
    upstream.check_status(response, secrets=headers.values())
    return upstream.response_json(response)


def headers_param(params: dict) -> dict[str, str]:
    headers = params.get("headers") or {}
    valid = isinstance(headers, dict) and all(
        isinstance(name, str) and isinstance(value, str) for name, value in headers.items()
    )
    if not valid:
        # Never quote the headers themselves: they may hold credentials.
        raise HandlerError("bad_params", "params.headers must be an object of string values")
    return headers

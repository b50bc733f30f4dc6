"""Generic HTTP upstream: POST the call as JSON to `params.url`; the result is the JSON answer.

Credentials (the call's credential set): `api_key` goes in `Authorization: Bearer <key>`, or
raw in the header its set names (`header: X-Api-Key`); `access_key` is sent as HTTP Basic
auth (access key, secret key); `none` sends nothing.
"""

import base64

from executor import credentials, upstream
from executor.handlers import Credentials, HandlerCall, HandlerError, Timeouts, handler

# Seconds the upstream has to answer, body included, unless `params.timeout` says otherwise.
DEFAULT_TIMEOUT = 30.0
# Seconds to open a connection.
CONNECT_TIMEOUT = 10.0


@handler(timeouts=Timeouts(connect=CONNECT_TIMEOUT, read=DEFAULT_TIMEOUT, total=DEFAULT_TIMEOUT))
async def post(call: HandlerCall):
    """POSTs {prompt, inputs, request_id, index} to `params.url`; result = the response JSON."""
    url = upstream.check_url(call.params.get("url"), param="url")
    headers = headers_param(call.params)
    given = call.credentials if call.credentials is not None else credentials.resolve("http.post")
    headers, auth = with_credentials(headers, given)
    payload = {
        "prompt": call.prompt,
        "inputs": call.inputs,
        "request_id": call.request_id,
        "index": call.index,
    }
    response = await upstream.post_json(
        url,
        payload=payload,
        headers=headers,
        timeouts=upstream.call_timeouts(call, DEFAULT_TIMEOUT),
        auth=auth,
    )
    # Header values often carry tokens: keep them out of any quoted upstream message.
    secrets = [*headers.values(), *credentials.secrets_of(given)]
    if auth:  # and the Basic form of an access key, should the upstream echo the header
        secrets.append(base64.b64encode(":".join(auth).encode()).decode())
    upstream.check_status(response, secrets=secrets)
    return upstream.response_json(response)


def with_credentials(
    headers: dict[str, str], given: Credentials
) -> tuple[dict[str, str], tuple[str, str] | None]:
    """The headers and Basic auth that carry the credential set."""
    if given.kind == "api_key":
        header = given.get("header")
        if header:
            return {**headers, header: given.get("api_key")}, None
        return {**headers, "Authorization": f"Bearer {given.get('api_key')}"}, None
    if given.kind == "access_key":
        return headers, (given.get("access_key"), given.get("secret_key"))
    return headers, None


def headers_param(params: dict) -> dict[str, str]:
    headers = params.get("headers") or {}
    valid = isinstance(headers, dict) and all(
        isinstance(name, str) and isinstance(value, str) for name, value in headers.items()
    )
    if not valid:
        # Never quote the headers themselves: they may hold credentials.
        raise HandlerError("bad_params", "params.headers must be an object of string values")
    return headers

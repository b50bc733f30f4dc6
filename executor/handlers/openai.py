"""OpenAI-compatible chat completions (OpenAI itself, or any server that speaks its API)."""

import json

from django.conf import settings

from configs import live
from executor import credentials, upstream
from executor.handlers import HandlerCall, HandlerError, Timeouts, handler

# Where requests go when neither `params.base_url`, the config nor OPENAI_BASE_URL says otherwise.
DEFAULT_BASE_URL = "https://api.openai.com/v1"
# Env var holding the API key unless `params.api_key_env` names another.
DEFAULT_API_KEY_ENV = "OPENAI_API_KEY"
# Seconds a whole completion may take; chat models can be slow on long answers.
DEFAULT_TIMEOUT = 60.0
# Seconds to open a connection: an upstream that cannot even accept one is down.
CONNECT_TIMEOUT = 10.0


@handler(timeouts=Timeouts(connect=CONNECT_TIMEOUT, read=DEFAULT_TIMEOUT, total=DEFAULT_TIMEOUT))
async def chat(call: HandlerCall) -> str:
    """One chat completion of the prompt. Model and base URL come from the offer's params, else
    the active `service_map` config (`handlers: openai.chat: {credentials, base_url, model}`),
    else the environment (OPENAI_BASE_URL); the key from the call's credential set (api_key),
    else OPENAI_API_KEY."""
    params = call.params
    configured = live.section("service_map", "handlers", "openai.chat")
    model = params.get("model") or configured.get("model")
    if not model or not isinstance(model, str):
        raise HandlerError("bad_params", "params.model is required")
    base_url = (
        params.get("base_url")
        or configured.get("base_url")
        or settings.OPENAI_BASE_URL
        or DEFAULT_BASE_URL
    )
    url = upstream.check_url(base_url, param="base_url").rstrip("/") + "/chat/completions"
    timeouts = upstream.call_timeouts(call, DEFAULT_TIMEOUT)
    # A server of one's own (a local Ollama, vLLM) may take no key: none is sent then.
    api_key = chat_api_key(call, required=base_url == DEFAULT_BASE_URL)
    if call.chat is not None:
        return await gateway_call(call, url, model, api_key, timeouts)
    response = await upstream.post_json(
        url,
        payload=request_body(call, model),
        timeouts=timeouts,
        headers=auth_headers(api_key),
    )
    upstream.check_status(response, secrets=[api_key])
    return completion_text(upstream.response_json(response))


def auth_headers(api_key: str) -> dict:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


async def gateway_call(call: HandlerCall, url: str, model: str, api_key: str, timeouts) -> dict:
    """A gateway call (/v1/chat/completions): the client's body to the route's model, its
    output through the call's relay (executor/relay.py); the result is the chat.completion."""
    relay = call.relay
    body = {**call.chat, "model": model}
    headers = auth_headers(api_key)
    if not body.get("stream"):
        response = await upstream.post_json(url, payload=body, timeouts=timeouts, headers=headers)
        upstream.check_status(response, secrets=[api_key])
        completion = upstream.response_json(response)
        completion_text(completion)  # an answer without a message is no completion
        return relay.answer(completion)
    # Always ask for the usage: it is what the call is charged, streamed or not.
    body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
    async for data in upstream.stream_sse(
        url, payload=body, headers=headers, timeouts=timeouts, secrets=[api_key]
    ):
        if data.strip() == "[DONE]":
            relay.finished = True
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            raise HandlerError(
                "bad_upstream_response", "the upstream streamed a chunk that is not JSON"
            ) from None
        if not isinstance(chunk, dict):
            raise HandlerError("bad_upstream_response", "the upstream streamed a non-object")
        if chunk.get("error"):
            raise HandlerError(
                "upstream_error",
                "the upstream's stream ended with an error: "
                + upstream.redact(str(upstream_error_message(chunk["error"])), [api_key]),
                retryable=True,
                reason="5xx",
            )
        await relay.chunk(chunk)
    await relay.drain()  # the call's end must follow its last chunk
    if not relay.finished:
        raise HandlerError(
            "upstream_stream_broken",
            "the upstream's stream ended before [DONE]",
            retryable=True,
            reason="broken",
        )
    return relay.completion()


def upstream_error_message(error) -> str:
    if isinstance(error, dict):
        return str(error.get("message") or "")[:200]
    return str(error)[:200]


def chat_api_key(call: HandlerCall, *, required: bool = True) -> str:
    """`params.api_key_env` if the offer names one, else the call's credential set, else
    OPENAI_API_KEY; "" when none is set and none is `required`."""
    given = call.credentials
    if given is None:
        given = credentials.resolve("openai.chat")
    if call.params.get("api_key_env") or given.kind == "none":
        try:
            return api_key_from_env(call.params.get("api_key_env") or DEFAULT_API_KEY_ENV)
        except HandlerError as exc:
            if required or exc.code != "missing_credentials":
                raise
            return ""
    if given.kind != "api_key":
        raise HandlerError(
            "missing_credentials",
            f"openai.chat needs an api_key credential set; {given.name!r} is {given.kind}",
        )
    return given.get("api_key")


def api_key_from_env(name: str) -> str:
    # Only *_API_KEY variables: an offer must not be able to send DJANGO_SECRET_KEY upstream.
    if not isinstance(name, str) or not name.endswith("_API_KEY"):
        raise HandlerError(
            "bad_params", "params.api_key_env must name a variable ending in _API_KEY"
        )
    key = settings.UPSTREAM_API_KEYS.get(name, "").strip()
    if not key:
        raise HandlerError(
            "missing_credentials", f"the API key is not set (environment variable {name})"
        )
    return key


def request_body(call: HandlerCall, model: str) -> dict:
    messages = []
    if call.params.get("system"):
        messages.append({"role": "system", "content": str(call.params["system"])})
    messages.append({"role": "user", "content": call.prompt})
    body = {"model": model, "messages": messages}
    for name in ("temperature", "max_tokens"):
        if call.params.get(name) is not None:
            body[name] = call.params[name]
    return body


def completion_text(data) -> str:
    """`choices[0].message.content`, or bad_upstream_response when the answer lacks it."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        raise HandlerError(
            "bad_upstream_response", "the upstream's answer has no choices[0].message.content text"
        )
    return content

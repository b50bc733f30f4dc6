"""Gateway calls (`POST /v1/chat/completions`, issue 18): what a client's OpenAI request becomes,
and what it holds and costs.

    call = chat_call(offer=offer, body=body)     400 for a body the offer does not take
    call.upstream_body                           what the executor sends (the model set there)
    call.hold                                    credits intake holds: the most it can cost
    charge_for(meter, usage)                     credits the end captures

The operator fixes the upstream model (the offer's `params.model`, or each fallback's) and may
cap what clients pass, in the offer's params:

    max_tokens: 1024        the most a client may ask (and what it gets when it asks none)
    max_temperature: 1.0    a higher temperature is lowered to it
    tools: false            a call with tools (or functions) is refused

Everything else in the body is passed through as the client sent it.

Metered prices: charge = price + ⌈(input tokens × price_per_1k_input + output tokens ×
price_per_1k_output) / 1000⌉, rounded up once per request. The hold is the same sum with the
input counted here (`count_message_tokens`) and the output at `max_tokens` (× `n`); the end
uses the upstream's `usage`, or — a stream that broke, a client that left — this count of the
input and the output chunks actually relayed. A call that did not succeed pays for the tokens
it relayed only (none relayed: nothing). A charge beyond the hold captures the hold: the
overrun is recorded, the balance never goes below zero.
"""

import json
import math
import re
from dataclasses import dataclass

from django.conf import settings

from api.errors import ApplicationError
from api.models import ServiceOffer

# Per message, what OpenAI's chat format adds around its content; and the reply's priming.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_REPLY = 3
# A non-text part (an image) counts as this many (OpenAI's high-detail 512 px tile count).
TOKENS_PER_PART = 765
# Roughly the pieces a byte-level BPE tokenizer starts from: words with their leading space,
# runs of digits (three at most), runs of other symbols, runs of spaces. A long word splits
# into several tokens: one more per LONG_WORD characters.
_PIECES = re.compile(r" ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|\s+(?!\S)|\s+|_+")
LONG_WORD = 8
# Body fields the gateway owns: the upstream model is the operator's, streaming is relayed.
OWNED = ("model",)


def completion_id(request_id: str) -> str:
    """The `id` of a gateway call's completion and chunks: its request's, as OpenAI spells one."""
    return f"chatcmpl-{request_id[:32]}"


def count_text_tokens(text: str) -> int:
    """An estimate of the tokens of `text` (no tokenizer ships with the gateway: each model
    has its own); the upstream's `usage` is what a call that ends is charged."""
    if not text:
        return 0
    return sum(1 + (len(piece) - 1) // LONG_WORD for piece in _PIECES.findall(text))


def _content_tokens(content) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text_tokens(content)
    if isinstance(content, list):
        total = 0
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                total += count_text_tokens(part["text"])
            else:
                total += TOKENS_PER_PART
        return total
    return count_text_tokens(json.dumps(content, ensure_ascii=False))


def count_message_tokens(messages: list, tools=None) -> int:
    """The input tokens of a chat call, as the hold and a broken stream count them."""
    total = TOKENS_PER_REPLY
    for message in messages:
        total += TOKENS_PER_MESSAGE + _content_tokens(message.get("content"))
        for name in ("name", "tool_call_id"):
            if isinstance(message.get(name), str):
                total += count_text_tokens(message[name])
        if message.get("tool_calls") is not None:
            total += count_text_tokens(json.dumps(message["tool_calls"], ensure_ascii=False))
    if tools:
        total += count_text_tokens(json.dumps(tools, ensure_ascii=False))
    return total


def metered(*, per_1k_input: int, per_1k_output: int, input_tokens: int, output_tokens: int) -> int:
    """The metered part of a charge: the per-token prices' sum, rounded up once."""
    return math.ceil((input_tokens * per_1k_input + output_tokens * per_1k_output) / 1000)


@dataclass(frozen=True)
class ChatCall:
    upstream_body: dict  # without the model: the route that serves it sets its own
    stream: bool
    include_usage: bool
    input_tokens: int
    max_output: int  # max_tokens × n
    hold: int

    def meter(self, offer: ServiceOffer) -> dict:
        """What the request document keeps to settle the call (ServiceRequest.meter)."""
        return {
            "model": offer.model_name,
            "price": offer.price,
            "price_per_1k_input": offer.price_per_1k_input,
            "price_per_1k_output": offer.price_per_1k_output,
            "hold": self.hold,
            "input_tokens": self.input_tokens,
            "max_output": self.max_output,
            "include_usage": self.include_usage,
        }


def _bad(message: str, param: str, code: str = "invalid_request") -> ApplicationError:
    return ApplicationError(code, message, param=param)


def _positive_int(body: dict, name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _bad(f"{name} must be a positive integer", name)
    return value


def _messages(body: dict) -> list:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages must be a non-empty array of messages", "messages")
    if len(messages) > settings.SVC_CHAT_MAX_MESSAGES:
        raise _bad(f"at most {settings.SVC_CHAT_MAX_MESSAGES} messages are taken", "messages")
    for position, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _bad(f"messages[{position}] must be an object with a role", "messages")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise _bad(
                f"messages[{position}].content must be a string or an array of parts", "messages"
            )
    return messages


def chat_call(*, offer: ServiceOffer, body: dict) -> ChatCall:
    """The client's body checked and capped by the offer's params (module doc); 400
    `invalid_request` (with the `param`) for what cannot be sent."""
    params = offer.params or {}
    messages = _messages(body)
    upstream = {name: value for name, value in body.items() if name not in OWNED}
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream must be true or false", "stream")
    options = body.get("stream_options")
    if options is not None and (not isinstance(options, dict) or not stream):
        raise _bad("stream_options is an object, and only for stream: true", "stream_options")
    include_usage = bool((options or {}).get("include_usage"))
    n = _positive_int(body, "n") or 1
    if n > settings.SVC_CHAT_MAX_N:
        raise _bad(f"n may be at most {settings.SVC_CHAT_MAX_N}", "n")
    tools = body.get("tools") or body.get("functions")
    if tools and params.get("tools") is False:
        raise _bad("this model takes no tools", "tools", code="tools_not_allowed")
    # max_tokens (or its newer name): the client's, within the operator's cap; always sent,
    # so the hold's bound is the upstream's too.
    name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    asked = _positive_int(body, name)
    cap = params.get("max_tokens") or settings.SVC_CHAT_MAX_TOKENS
    upstream[name] = min(asked, cap) if asked else cap
    temperature = body.get("temperature")
    if temperature is not None:
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise _bad("temperature must be a number", "temperature")
        ceiling = params.get("max_temperature")
        if isinstance(ceiling, int | float) and temperature > ceiling:
            upstream["temperature"] = ceiling
    input_tokens = count_message_tokens(messages, tools)
    max_output = upstream[name] * n
    hold = offer.price + metered(
        per_1k_input=offer.price_per_1k_input,
        per_1k_output=offer.price_per_1k_output,
        input_tokens=input_tokens,
        output_tokens=max_output,
    )
    return ChatCall(
        upstream_body=upstream,
        stream=stream,
        include_usage=include_usage,
        input_tokens=input_tokens,
        max_output=max_output,
        hold=hold,
    )


def charge_for(meter: dict, usage: dict, *, succeeded: bool) -> tuple[int, int]:
    """(credits to capture, overrun): the fixed price (if it succeeded) and the tokens used,
    at most the hold; `overrun` is what the call cost beyond it (0 almost always)."""
    tokens = metered(
        per_1k_input=meter["price_per_1k_input"],
        per_1k_output=meter["price_per_1k_output"],
        input_tokens=usage.get("prompt_tokens") or 0,
        output_tokens=usage.get("completion_tokens") or 0,
    )
    if not succeeded and not usage.get("completion_tokens"):
        return 0, 0  # nothing reached the client
    cost = tokens + (meter["price"] if succeeded else 0)
    return min(cost, meter["hold"]), max(cost - meter["hold"], 0)

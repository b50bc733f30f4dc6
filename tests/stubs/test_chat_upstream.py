"""The streaming chat upstream (tests/stubs/chat_upstream.py), driven by the official SDK."""

import time

import httpx
import openai
import pytest
from openai import OpenAI

from tests.live import wait_until
from tests.stubs.chat_upstream import PROMPT_OVERHEAD, ChatUpstream, stub_tokens

MESSAGES = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hello there"},
]


def client_for(upstream, **options) -> OpenAI:
    options = {"api_key": upstream.api_key, "max_retries": 0, "timeout": 10, **options}
    return OpenAI(base_url=upstream.url, **options)


def stream(upstream, **options):
    return client_for(upstream).chat.completions.create(
        model="stub-model", messages=MESSAGES, stream=True, **options
    )


def test_stub_tokens_are_words_with_their_leading_whitespace():
    assert stub_tokens("echo:  hello\nthere ") == ["echo:", "  hello", "\nthere"]
    assert stub_tokens("") == []


def test_it_answers_a_completion_with_usage(chat_upstream):
    completion = client_for(chat_upstream).chat.completions.create(
        model="stub-model", messages=MESSAGES
    )

    assert completion.object == "chat.completion"
    assert completion.model == "stub-model"
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"
    prompt = 2 + 2 + 2 * PROMPT_OVERHEAD
    assert completion.usage.model_dump() == {
        "prompt_tokens": prompt,
        "completion_tokens": 3,
        "total_tokens": prompt + 3,
        "completion_tokens_details": None,
        "prompt_tokens_details": None,
    }
    (request,) = chat_upstream.requests
    assert request["headers"]["authorization"] == f"Bearer {chat_upstream.api_key}"
    assert request["json"]["messages"] == MESSAGES


def test_it_echoes_text_parts_and_truncates_to_max_tokens(chat_upstream):
    parts = [{"type": "text", "text": "one two "}, {"type": "text", "text": "three"}]
    completion = client_for(chat_upstream).chat.completions.create(
        model="stub-model", messages=[{"role": "user", "content": parts}], max_tokens=2
    )

    assert completion.choices[0].message.content == "echo: one"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage.completion_tokens == 2


def test_it_streams_one_chunk_a_token_then_the_usage(chat_upstream):
    chat_upstream.reply = "one two three"

    chunks = list(stream(chat_upstream, stream_options={"include_usage": True}))

    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].delta.content for c in chunks[1:4]] == ["one", " two", " three"]
    assert chunks[4].choices[0].finish_reason == "stop"
    assert chunks[5].choices == []
    assert chunks[5].usage.completion_tokens == 3
    assert len(chunks) == 6
    assert {c.id for c in chunks} == {chunks[0].id}
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chat_upstream.disconnects == 0
    assert chat_upstream.streams_open == 0


def test_it_streams_a_long_reply_whole(chat_upstream):
    chat_upstream.reply = " ".join(f"w{i}" for i in range(2000))

    contents = [c.choices[0].delta.content for c in stream(chat_upstream) if c.choices]

    assert "".join(c for c in contents if c) == chat_upstream.reply


def test_a_broken_stream_fails_the_sdk_with_a_connection_error(chat_upstream):
    """The SDK raises APIConnectionError (from httpx2's RemoteProtocolError, "incomplete
    chunked read") once the chunks sent before the break are read: it does not end quietly."""
    chat_upstream.reply = "one two three four"
    chat_upstream.break_after = 2
    contents = []

    with pytest.raises(openai.APIConnectionError) as raised:
        for chunk in stream(chat_upstream):
            contents.append(chunk.choices[0].delta.content)

    assert not isinstance(raised.value, openai.APITimeoutError)
    assert "incomplete chunked read" in str(raised.value.__cause__)
    assert contents == ["", "one", " two"]
    assert chat_upstream.disconnects == 0  # the upstream left, not the client


def test_it_sees_a_client_leave_a_hanging_stream(chat_upstream):
    chat_upstream.hang_after = 1
    with stream(chat_upstream) as chunks:
        next(chunks)  # the role
        assert next(chunks).choices[0].delta.content == "echo:"
        assert chat_upstream.streams_open == 1

    wait_until(chat_upstream.disconnected.is_set, timeout=10, what="the client to be seen leaving")
    assert chat_upstream.disconnects == 1
    assert chat_upstream.streams_open == 0


def test_it_sees_a_client_time_out_between_tokens(chat_upstream):
    chat_upstream.token_delay = 5

    with pytest.raises(openai.APITimeoutError):
        list(
            client_for(chat_upstream, timeout=0.5).chat.completions.create(
                model="stub-model", messages=MESSAGES, stream=True
            )
        )

    # Before the next token is due: the wait between tokens watches the client.
    wait_until(chat_upstream.disconnected.is_set, timeout=3, what="the client to be seen leaving")
    assert chat_upstream.streams_open == 0


def test_a_scripted_status_is_an_openai_error(chat_upstream):
    chat_upstream.status = 500

    with pytest.raises(openai.InternalServerError) as raised:
        client_for(chat_upstream).chat.completions.create(model="stub-model", messages=MESSAGES)

    assert raised.value.status_code == 500
    assert raised.value.body == {
        "message": "scripted status 500",
        "type": "invalid_request_error",
        "param": None,
        "code": "server_error",
    }
    chat_upstream.reset()
    assert (
        client_for(chat_upstream)
        .chat.completions.create(model="stub-model", messages=MESSAGES)
        .choices
    )


def test_a_wrong_key_is_refused(chat_upstream):
    with pytest.raises(openai.AuthenticationError) as raised:
        client_for(chat_upstream, api_key="sk-wrong").chat.completions.create(
            model="stub-model", messages=MESSAGES
        )

    assert raised.value.status_code == 401
    assert raised.value.code == "invalid_api_key"


def test_other_paths_are_not_found(chat_upstream):
    with pytest.raises(openai.NotFoundError):
        client_for(chat_upstream).models.list()


def test_the_backup_is_another_upstream(chat_upstream, chat_backup):
    chat_backup.status = 503
    assert chat_backup.url != chat_upstream.url

    client_for(chat_upstream).chat.completions.create(model="stub-model", messages=MESSAGES)

    assert (chat_upstream.calls, chat_backup.calls) == (1, 0)


def test_stop_returns_quickly_with_a_stream_hanging():
    with ChatUpstream() as upstream, httpx.Client(timeout=10) as client:
        upstream.hang_after = 0
        request = client.build_request(
            "POST",
            f"{upstream.url}/chat/completions",
            json={"model": "stub-model", "messages": MESSAGES, "stream": True},
            headers={"Authorization": f"Bearer {upstream.api_key}"},
        )
        lines = client.send(request, stream=True).iter_lines()
        assert next(lines).startswith("data: ")  # the role

        started = time.monotonic()
        upstream.stop()

        assert time.monotonic() - started < 1
        with pytest.raises(httpx.RemoteProtocolError):
            list(lines)


def test_the_first_token_waits_first_token_delay(chat_upstream):
    chat_upstream.first_token_delay = 0.3
    started = time.monotonic()

    with stream(chat_upstream) as chunks:
        next(chunks)  # the role, at once
        next(chunks)
        assert time.monotonic() - started >= 0.3

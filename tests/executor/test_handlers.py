import logging

import pytest

from executor import handlers, runtime
from executor.handlers import HandlerCall, HandlerError, all_handlers, get_handler, handler
from infra.embedded import free_port
from tests.helpers import run_worker


def call_handler(handler_id: str, params: dict, prompt: str = "Hi there", index: int = 0):
    """Run a handler the way jobs do: on the shared loop, with the shared HTTP client."""
    call = HandlerCall(
        request_id="req-1", prompt=prompt, inputs={"x": prompt}, params=params, index=index
    )
    return runtime.run(get_handler(handler_id).func(call))


def failure(handler_id: str, params: dict) -> HandlerError:
    with pytest.raises(HandlerError) as info:
        call_handler(handler_id, params)
    return info.value


def closed_port_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


# --- registry ---------------------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry with the built-ins loaded, so tests may register freely."""
    all_handlers()
    monkeypatch.setattr(handlers, "_registry", dict(handlers._registry))


def fake_module_function(name: str, module: str = "executor.handlers.sample"):
    def fn(call):
        return call.prompt

    fn.__name__ = name
    fn.__module__ = module
    return fn


def test_it_registers_the_built_in_handlers():
    registered = all_handlers()
    assert {"local.echo", "local.fail", "openai.chat", "http.post"} <= set(registered)
    assert registered["openai.chat"].is_async and registered["http.post"].is_async
    assert registered["openai.chat"].description


def test_it_names_a_handler_after_its_module_and_function(scratch_registry):
    greet = handler(fake_module_function("greet"))
    assert get_handler("sample.greet").func is greet
    assert not get_handler("sample.greet").is_async
    renamed = handler(name="hello")(fake_module_function("other"))
    assert get_handler("sample.hello").func is renamed


def test_it_refuses_a_second_handler_under_the_same_id(scratch_registry):
    first = handler(fake_module_function("greet"))
    handler(first)  # the same function again (a module re-import) is fine
    with pytest.raises(RuntimeError, match="sample.greet"):
        handler(fake_module_function("greet"))
    assert get_handler("sample.greet").func is first


# --- openai.chat --------------------------------------------------------------------------


@pytest.fixture
def openai_key(settings, openai_stub):
    settings.UPSTREAM_API_KEYS = {"OPENAI_API_KEY": openai_stub.api_key}
    return openai_stub.api_key


def chat_params(stub, **params) -> dict:
    return {"model": "gpt-stub", "base_url": f"{stub.url}/v1", **params}


def test_openai_chat_returns_the_completion_text(openai_stub, openai_key):
    params = chat_params(openai_stub, system="Be brief.", temperature=0.2, max_tokens=50)
    assert call_handler("openai.chat", params) == "echo: Hi there"
    [sent] = openai_stub.requests
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == f"Bearer {openai_key}"
    assert sent.json == {
        "model": "gpt-stub",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
        ],
        "temperature": 0.2,
        "max_tokens": 50,
    }


def test_openai_chat_sends_only_the_user_message_by_default(openai_stub, openai_key):
    call_handler("openai.chat", chat_params(openai_stub))
    assert openai_stub.requests[0].json == {
        "model": "gpt-stub",
        "messages": [{"role": "user", "content": "Hi there"}],
    }


def test_openai_chat_takes_base_url_and_key_from_the_named_env_vars(openai_stub, settings):
    settings.OPENAI_BASE_URL = f"{openai_stub.url}/v1/"
    settings.UPSTREAM_API_KEYS = {"STUB_LLM_API_KEY": openai_stub.api_key}
    params = {"model": "gpt-stub", "api_key_env": "STUB_LLM_API_KEY"}
    assert call_handler("openai.chat", params) == "echo: Hi there"
    assert openai_stub.requests[0].path == "/v1/chat/completions"


def test_openai_chat_reports_a_wrong_key_without_revealing_it(openai_stub, settings, caplog):
    caplog.set_level(logging.DEBUG)
    wrong_key = "sk-wrong-key-that-must-not-leak"
    settings.UPSTREAM_API_KEYS = {"OPENAI_API_KEY": wrong_key}
    error = failure("openai.chat", chat_params(openai_stub))
    assert error.code == "upstream_error"
    assert "401" in error.message
    assert "Incorrect API key provided" in error.message  # the stub quoted the key back …
    assert wrong_key not in error.message  # … and the handler redacted it
    assert wrong_key not in caplog.text


def test_openai_chat_needs_the_key_env_var_for_openai(settings):
    settings.UPSTREAM_API_KEYS = {}
    settings.OPENAI_BASE_URL = None
    error = failure("openai.chat", {"model": "gpt-stub"})  # refused before any connection
    assert error.code == "missing_credentials"
    assert "OPENAI_API_KEY" in error.message


def test_openai_chat_sends_no_key_to_a_server_of_ones_own_when_none_is_set(openai_stub, settings):
    settings.UPSTREAM_API_KEYS = {}  # a local Ollama or vLLM takes none
    error = failure("openai.chat", chat_params(openai_stub))
    assert error.code == "upstream_error"  # this stub wants one
    [sent] = openai_stub.requests
    assert not any(name.lower() == "authorization" for name in sent.headers)


def test_openai_chat_needs_a_model(openai_stub, openai_key):
    error = failure("openai.chat", {"base_url": openai_stub.url})
    assert (error.code, error.message) == ("bad_params", "params.model is required")


@pytest.mark.parametrize(
    "params", [{"base_url": "ftp://example.com"}, {"timeout": 0}, {"timeout": "soon"}]
)
def test_openai_chat_rejects_bad_params(openai_stub, openai_key, params):
    assert failure("openai.chat", chat_params(openai_stub, **params)).code == "bad_params"
    assert openai_stub.requests == []


def test_openai_chat_times_out(openai_stub, openai_key):
    openai_stub.script(delay=1.0)
    error = failure("openai.chat", chat_params(openai_stub, timeout=0.2))
    assert error.code == "upstream_timeout"
    assert "0.2s" in error.message


@pytest.mark.parametrize("status", [429, 500, 503])
def test_openai_chat_reports_upstream_errors_with_their_status(openai_stub, openai_key, status):
    openai_stub.script(status=status)
    error = failure("openai.chat", chat_params(openai_stub))
    assert error.code == "upstream_error"
    assert error.message == f"the upstream answered HTTP {status}: scripted status {status}"


def test_openai_chat_truncates_long_upstream_messages(openai_stub, openai_key):
    openai_stub.script(status=400, body=b'{"error": {"message": "' + b"x" * 1000 + b'"}}')
    error = failure("openai.chat", chat_params(openai_stub))
    assert error.message == "the upstream answered HTTP 400: " + "x" * 200


def test_openai_chat_rejects_a_non_json_answer(openai_stub, openai_key):
    openai_stub.script(body=b"<html>gateway</html>")
    assert failure("openai.chat", chat_params(openai_stub)).code == "bad_upstream_response"


def test_openai_chat_rejects_an_answer_without_choices(openai_stub, openai_key):
    openai_stub.script(body=b'{"object": "chat.completion", "choices": []}')
    assert failure("openai.chat", chat_params(openai_stub)).code == "bad_upstream_response"


def test_openai_chat_reports_an_unreachable_upstream(openai_key):
    error = failure("openai.chat", {"model": "gpt-stub", "base_url": closed_port_url()})
    assert error.code == "upstream_unreachable"


# --- http.post ----------------------------------------------------------------------------


def test_http_post_returns_the_answer_json(json_stub):
    params = {"url": f"{json_stub.url}/hook", "headers": {"X-Token": "secret-token"}}
    result = call_handler("http.post", params, prompt="Hello", index=1)
    assert result == {
        "prompt": "Hello",
        "inputs": {"x": "Hello"},
        "request_id": "req-1",
        "index": 1,
    }
    [sent] = json_stub.requests
    assert sent.path == "/hook"
    assert sent.headers["X-Token"] == "secret-token"
    assert sent.headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"url": "ftp://example.com/x"},
        {"url": "not a url"},
        {"url": "http://x", "headers": {"X-Token": 1}},
        {"url": "http://x", "headers": ["X-Token"]},
    ],
)
def test_http_post_rejects_bad_params(params):
    assert failure("http.post", params).code == "bad_params"


def test_http_post_reports_a_non_2xx_answer_without_header_values(json_stub, caplog):
    caplog.set_level(logging.DEBUG)
    json_stub.script(status=403, body=b'{"error": "token secret-token is revoked"}')
    error = failure("http.post", {"url": json_stub.url, "headers": {"X-Token": "secret-token"}})
    assert error.code == "upstream_error"
    assert error.message == "the upstream answered HTTP 403: token [redacted] is revoked"
    assert "secret-token" not in caplog.text


def test_http_post_rejects_a_non_json_answer(json_stub):
    json_stub.script(body=b"ok")
    assert failure("http.post", {"url": json_stub.url}).code == "bad_upstream_response"


def test_http_post_times_out(json_stub):
    json_stub.script(delay=1.0)
    assert failure("http.post", {"url": json_stub.url, "timeout": 0.2}).code == "upstream_timeout"


def test_http_post_reports_an_unreachable_upstream():
    assert failure("http.post", {"url": closed_port_url()}).code == "upstream_unreachable"


# --- end to end through the API -----------------------------------------------------------


def test_it_runs_an_openai_request_end_to_end(alice_api, make_offer, openai_stub, openai_key):
    make_offer(
        handler="openai.chat",
        create_qty=2,
        params={"model": "gpt-stub", "base_url": f"{openai_stub.url}/v1"},
    )
    response = alice_api.post("/svc/text/act/", {"x": "hello"}, format="json")
    assert response.status_code == 202, response.content
    run_worker()
    got = alice_api.get(response.json()["url"]).json()
    assert got["status"] == "succeeded", got
    assert got["results"] == ["echo: hello", "echo: hello"]
    assert len(openai_stub.requests) == 2


def test_it_fails_an_openai_request_on_an_upstream_error(
    alice_api, make_offer, openai_stub, openai_key
):
    openai_stub.script(status=500)
    make_offer(
        handler="openai.chat", params={"model": "gpt-stub", "base_url": f"{openai_stub.url}/v1"}
    )
    response = alice_api.post("/svc/text/act/", {"x": "hello"}, format="json")
    run_worker()
    got = alice_api.get(response.json()["url"])
    body = got.json()
    assert body["status"] == "failed", body
    assert body["error"]["code"] == "upstream_error"
    assert "500" in body["error"]["message"]
    assert openai_key not in got.content.decode()


def test_openai_chat_refuses_to_read_a_variable_that_is_not_an_api_key(openai_stub, settings):
    settings.UPSTREAM_API_KEYS = {"DJANGO_SECRET_KEY": "do-not-send"}
    params = {"model": "m", "base_url": openai_stub.url, "api_key_env": "DJANGO_SECRET_KEY"}
    assert failure("openai.chat", params).code == "bad_params"
    assert openai_stub.requests == []

"""Stubs for the network handlers: an OpenAI-compatible chat API and a JSON echo server."""

import itertools

from tests.stubs.server import Answer, RecordedRequest, StubServer

STUB_API_KEY = "sk-stub-0123456789abcdef"


class OpenAIStub(StubServer):
    """Answers POST …/chat/completions with "echo: <last user message>" for the right key."""

    def __init__(self, api_key: str = STUB_API_KEY):
        super().__init__()
        self.api_key = api_key
        self._ids = itertools.count(1)

    def answer(self, request: RecordedRequest) -> Answer:
        if not request.path.endswith("/chat/completions"):
            return openai_error(404, f"Unknown request URL: POST {request.path}", "unknown_url")
        given = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if given != self.api_key:
            # Like OpenAI, quote the key back: handlers must keep it out of their errors.
            return openai_error(401, f"Incorrect API key provided: {given}", "invalid_api_key")
        body = request.json if isinstance(request.json, dict) else {}
        user_messages = [m for m in body.get("messages", []) if m.get("role") == "user"]
        content = f"echo: {user_messages[-1]['content']}" if user_messages else "echo:"
        return Answer.json(
            200,
            {
                "id": f"chatcmpl-stub-{next(self._ids)}",
                "object": "chat.completion",
                "created": 0,
                "model": body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            },
        )

    def error_answer(self, status: int) -> Answer:
        return openai_error(status, f"scripted status {status}", "server_error")


def openai_error(status: int, message: str, code: str) -> Answer:
    return Answer.json(
        status,
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        },
    )


class JSONEchoStub(StubServer):
    """Answers every POST with the JSON it received."""

    def answer(self, request: RecordedRequest) -> Answer:
        return Answer(200, request.body)

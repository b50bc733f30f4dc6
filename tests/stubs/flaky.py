"""An upstream that fails on purpose, answer by answer: a real HTTP server on 127.0.0.1.

`FlakyStub.fail_next(503, 503)` makes the next two POSTs answer 503, then it answers normally
(the JSON it received, like JSONEchoStub); `fail_always(503)` fails every POST until
`recover()`. Failures may carry headers (`Retry-After`) and a message in an OpenAI-style error
body (to test that an echoed secret is redacted). `hits` counts POSTs, `hit_times` their
monotonic times.
"""

import threading
import time

from tests.stubs.server import Answer, RecordedRequest, StubServer


class FlakyStub(StubServer):
    def __init__(self):
        super().__init__()
        self._lock = threading.Lock()
        self._planned: list[Answer] = []
        self._always: Answer | None = None
        self.hit_times: list[float] = []

    @property
    def hits(self) -> int:
        return len(self.requests)

    def fail_next(self, *statuses: int, headers: dict | None = None, message: str = "") -> None:
        with self._lock:
            self._planned += [self._failure(s, headers, message) for s in statuses]

    def fail_always(self, status: int, message: str = "") -> None:
        self._always = self._failure(status, None, message)

    def recover(self) -> None:
        self._always = None

    def answer(self, request: RecordedRequest) -> Answer:
        with self._lock:
            self.hit_times.append(time.monotonic())
            if self._planned:
                return self._planned.pop(0)
        if self._always is not None:
            return self._always
        return Answer(200, request.body or b"{}")

    @staticmethod
    def _failure(status: int, headers: dict | None, message: str) -> Answer:
        body = {"error": {"message": message or f"planned failure {status}"}}
        answer = Answer.json(status, body)
        answer.headers = dict(headers or {})
        return answer

"""A real HTTP server on 127.0.0.1 in a background thread, with scripted misbehaviour.

Subclasses implement `answer()`; tests read `requests` and call `script()` to make the
next answers slow, fail with a status, or carry a raw (e.g. non-JSON) body.
"""

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 resets connections when executors call with many jobs at once.
    request_queue_size = 512


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: object = None


@dataclass
class Script:
    """How every following answer deviates from the normal one."""

    status: int | None = None  # answer with this status (and an error body) instead
    delay: float = 0.0  # seconds to wait before answering
    body: bytes | None = None  # send these bytes as the body instead


@dataclass
class Answer:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)

    @classmethod
    def json(cls, status: int, data) -> "Answer":
        return cls(status, json.dumps(data).encode())


# Longest a held call waits for release() (a test that never releases fails on its own wait).
GATE_TIMEOUT = 120


class StubServer:
    def __init__(self):
        self.requests: list[RecordedRequest] = []
        self.scripted = Script()
        # Calls being answered right now, and the most seen at once (resource-limit tests).
        self.inflight = 0
        self.max_inflight = 0
        self._count_lock = threading.Lock()
        # While closed (`hold()`), calls wait before they are answered (`release()` opens it).
        self._gate = threading.Event()
        self._gate.set()
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        # A short poll interval lets `stop()` return quickly at each test's teardown.
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def script(
        self, *, status: int | None = None, delay: float = 0.0, body: bytes | None = None
    ) -> None:
        self.scripted = Script(status=status, delay=delay, body=body)

    def hold(self) -> None:
        """Keep every call waiting, unanswered, until release()."""
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def answer(self, request: RecordedRequest) -> Answer:
        raise NotImplementedError

    def error_answer(self, status: int) -> Answer:
        return Answer.json(status, {"error": {"message": f"scripted status {status}"}})

    def respond(self, request: RecordedRequest) -> Answer:
        with self._count_lock:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            return self._respond(request)
        finally:
            with self._count_lock:
                self.inflight -= 1

    def _respond(self, request: RecordedRequest) -> Answer:
        self.requests.append(request)
        self._gate.wait(GATE_TIMEOUT)
        script = self.scripted
        if script.delay:
            time.sleep(script.delay)
        if script.body is not None:
            return Answer(script.status or 200, script.body, "text/plain")
        if script.status is not None:
            return self.error_answer(script.status)
        return self.answer(request)

    def start(self) -> "StubServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()


def _handler_for(stub: StubServer):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            answer = stub.respond(
                RecordedRequest("POST", self.path, dict(self.headers), body, parsed)
            )
            try:
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                self.send_header("Content-Length", str(len(answer.body)))
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(answer.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up first, as in timeout tests

        def log_message(self, format, *args):
            pass  # keep test output quiet

    return Handler

"""A liveness port for the processes that serve no HTTP of their own (executor, recon, webhook
worker): `GET /livez` answers 200 while the process's main loop goes round, 503 once it stopped
— a stuck process fails it, a busy one does not (it still goes round: an executor with every
slot taken waits for one in a loop that beats).

    beat = probe.serve(port, what="executor", stale_after=60)   # a daemon thread
    beat.touch()                                                # from the main loop

`checks` are further looks a process adds (the executor: its asyncio loop answers). Kubernetes'
and Compose's probes call it (deploy/k8s, deploy/compose.yaml); it is off unless SVC_PROBE_PORT
is set. The answer names nothing but the process kind and how long ago it beat.

`GET /metrics` on the same port serves the host's processes' metrics (a pod's own: its
executor's in-flight calls, job times, breakers) to a caller the API's /metrics would let in
(the token, or a trusted network); the store figures are the API's to serve.
"""

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from infra import metrics

logger = logging.getLogger(__name__)


class Beat:
    """When the main loop last went round."""

    def __init__(self, what: str, stale_after: float, checks: list[Callable[[], str]]):
        self.what = what
        self.stale_after = stale_after
        self.checks = checks
        self._at = time.monotonic()
        self.server: ThreadingHTTPServer | None = None

    def touch(self) -> None:
        self._at = time.monotonic()

    def state(self) -> tuple[bool, dict]:
        """(alive, what the probe answers)."""
        age = time.monotonic() - self._at
        problems = [] if age <= self.stale_after else [f"its loop last went round {age:.0f}s ago"]
        for check in self.checks:
            try:
                problem = check()
            except Exception as exc:  # a probe reports, never raises
                problem = f"{type(exc).__name__}"
            if problem:
                problems.append(problem)
        body = {"status": "ok" if not problems else "stuck", "process": self.what}
        body["last_beat_seconds"] = round(age, 1)
        if problems:
            body["problems"] = problems
        return not problems, body

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def serve(
    port: int,
    *,
    what: str,
    stale_after: float,
    addr: str = "0.0.0.0",
    checks: list[Callable[[], str]] | None = None,
) -> Beat:
    """Serve `GET /livez` on `addr:port` from a daemon thread; returns the Beat to touch."""
    beat = Beat(what, stale_after, checks or [])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            path = self.path.split("?")[0]
            if path == "/metrics":
                self._metrics()
                return
            if path != "/livez":
                self._answer(404, {"status": "not_found"})
                return
            alive, body = beat.state()
            self._answer(200 if alive else 503, body)

        def _metrics(self) -> None:
            # As the API's /metrics: the token, or a trusted network (infra/metrics.py).
            if not metrics.caller_allowed(
                self.headers.get("Authorization", ""), self.client_address[0]
            ):
                self._answer(403, {"status": "forbidden"})
                return
            payload, content_type = metrics.processes_exposition()
            self._answer(200, payload, content_type)

        def _answer(self, status: int, body, content_type: str = "application/json") -> None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
            return  # probes every few seconds would flood the logs

    server = ThreadingHTTPServer((addr, port), Handler)
    server.daemon_threads = True
    beat.server = server
    threading.Thread(target=server.serve_forever, name="probe", daemon=True).start()
    logger.info("%s liveness on http://%s:%d/livez", what, addr, port)
    return beat

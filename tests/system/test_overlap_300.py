"""One executor process holds 300 upstream calls at once (`runexecutor --concurrency 300`).

The upstream is a barrier on 127.0.0.1: it holds every request open until 300 are open at
once (each on its own connection, its client still connected), then answers them all. Fewer
than 300 at once within BARRIER_WINDOW seconds of the first call and it answers 503 instead,
so the test fails saying how many it saw at once.
"""

import asyncio
import json
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from api.documents import ServiceRequest
from tests.live import wait_until

N = 300
# Seconds after the first call by which all N must be open at once.
BARRIER_WINDOW = 90
# Seconds the executor may take to start and make its first call (a loaded 2-core machine).
FIRST_CALL_TIMEOUT = 120
# Seconds a held call may wait for its answer: longer than the barrier's window, so no call
# gives up (and comes back as a retry) before the barrier decides.
CALL_TIMEOUT = BARRIER_WINDOW + 60
# The handlers' resources without limits: the shipped map caps `http` below N.
RESOURCE_MAP = "resources:\n  http: {max_concurrency: null}\n  local: {max_concurrency: null}\n"
CATALOG = """\
handlers:
  - {{id: http.post, credits: 1}}
offers:
  - {{service: overlap, action: call, price: 1, prompt_template: "{{n}}", handler: http.post,
      params: {{url: "{url}", timeout: {timeout}}}}}
"""


class BarrierUpstream:
    """An asyncio HTTP/1.1 server in a thread of its own: the barrier of the module doc."""

    def __init__(self, size: int, window: float):
        self.size = size
        self.window = window
        self.open: Counter[str] = Counter()  # request_id -> calls held now, client connected
        self.peak = 0  # most distinct requests held at once
        self.connections = 0  # connections open now
        self.connections_at_trip = 0
        self.called: list[str] = []  # request_id of every call received
        self.outcome: str | None = None  # "tripped" | "timed out"
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._writers: set[asyncio.StreamWriter] = set()
        self._timer: asyncio.TimerHandle | None = None

    # --- the test's thread ------------------------------------------------------------------

    def start(self) -> str:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(10)
        return f"http://127.0.0.1:{self.port}/v1/answer"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def describe(self) -> str:
        return (
            f"outcome {self.outcome}, {self.peak} of {self.size} calls at once at most, "
            f"{len(self.called)} calls received"
        )

    # --- the server's loop ------------------------------------------------------------------

    async def _listen(self) -> None:
        self.done = asyncio.Event()
        self.server = await asyncio.start_server(
            self._serve, "127.0.0.1", 0, backlog=2048, limit=64 * 1024
        )
        self.port = self.server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        self.server.close()
        if self._timer:
            self._timer.cancel()
        for writer in list(self._writers):
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self.connections -= 1
            self._writers.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")[1:]
        pairs = (line.partition(":") for line in lines if ":" in line)
        headers = {name.strip().lower(): value.strip() for name, _, value in pairs}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        request_id = str(json.loads(body).get("request_id"))
        self.called.append(request_id)
        if self._timer is None:
            self._timer = self.loop.call_later(self.window, self._time_out)
        if not self.done.is_set() and not await self._hold(request_id, reader):
            return False  # the client hung up while held
        if self.outcome == "tripped":
            status, answer = b"200 OK", {"ok": True, "request_id": request_id}
        else:
            status, answer = b"503 Service Unavailable", {"error": self.describe()}
        data = json.dumps(answer).encode()
        writer.write(
            b"HTTP/1.1 %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: keep-alive\r\n\r\n%s" % (status, len(data), data)
        )
        await writer.drain()
        return True

    async def _hold(self, request_id: str, reader: asyncio.StreamReader) -> bool:
        """Held until the barrier decides (True) or the client hangs up (False): a call
        counts as open only while its client still waits for it."""
        self.open[request_id] += 1
        self.peak = max(self.peak, len(self.open))
        if len(self.open) >= self.size and self.outcome is None:
            self.outcome = "tripped"
            self.connections_at_trip = self.connections
            self.done.set()
        decided = asyncio.ensure_future(self.done.wait())
        hung_up = asyncio.ensure_future(reader.read(1))  # HTTP/1.1: nothing until our answer
        try:
            await asyncio.wait({decided, hung_up}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (decided, hung_up):
                task.cancel()
            # Both have ended before the next readuntil() (one reader, one waiter at a time).
            await asyncio.gather(decided, hung_up, return_exceptions=True)
            self.open[request_id] -= 1
            if not self.open[request_id]:
                del self.open[request_id]
        return decided.done() and not decided.cancelled()

    def _time_out(self) -> None:
        if self.outcome is None:
            self.outcome = "timed out"
            self.done.set()


@pytest.fixture
def barrier():
    upstream = BarrierUpstream(N, BARRIER_WINDOW)
    upstream.url = upstream.start()
    yield upstream
    upstream.stop()


def statuses() -> Counter:
    return Counter(r.status for r in ServiceRequest.objects.only("status"))


@pytest.mark.timeout(480)
def test_one_executor_process_holds_300_upstream_calls_at_once(stack, tmp_path, barrier):
    resource_map = tmp_path / "resources.yaml"
    resource_map.write_text(RESOURCE_MAP)
    live = stack(SVC_RESOURCE_MAP=str(resource_map))
    catalog = tmp_path / "overlap.yaml"
    catalog.write_text(CATALOG.format(url=barrier.url, timeout=CALL_TIMEOUT))
    live.manage("catalog", "import", str(catalog))
    live.start_api(workers=2, threads=8)
    client = live.client("alice", credits=2 * N)

    def submit(n: int) -> tuple[int, dict]:
        response = client.post("/svc/overlap/call/", json={"n": f"call-{n}"})
        return response.status_code, response.json()

    # All N queued before the executor starts: it finds them all at once.
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(submit, range(N)))
    assert Counter(status for status, _ in answers) == {202: N}, answers[:3]
    ids = {body["id"] for _, body in answers}
    assert len(ids) == N  # distinct inputs: nothing deduplicated
    assert statuses() == {"queued": N}

    executor = live.start_executor("--concurrency", str(N))
    log = tmp_path / f"proc-{live.processes.index(executor)}.log"

    def found() -> str:
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
        return f"{barrier.describe()}, requests {dict(statuses())}; executor log:\n{tail}"

    wait_until(
        lambda: barrier.outcome is not None,
        timeout=FIRST_CALL_TIMEOUT + BARRIER_WINDOW,
        what=f"the upstream barrier to see {N} calls at once (or time out)",
        describe=found,
    )
    assert barrier.outcome == "tripped", (
        f"the barrier never held {N} calls at once within {BARRIER_WINDOW}s of the first: "
        f"peak {barrier.peak}; {found()}"
    )
    assert barrier.peak == N
    assert barrier.connections_at_trip >= N  # one connection per call in flight

    wait_until(
        lambda: statuses() == {"succeeded": N},
        timeout=120,
        what=f"all {N} requests to succeed",
        describe=found,
    )
    assert sorted(barrier.called) == sorted(ids)  # every request called exactly once
    errors = [line for line in log.read_text().splitlines() if '"level": "ERROR"' in line]
    assert errors == [], errors[:3]

"""A small HTTP/1.1 load generator: N clients, each one keep-alive connection, bounded requests.

asyncio streams rather than an HTTP library, so the generator spends little CPU per request
on a machine whose cores the server under test needs. Each client sends its next request as
soon as the previous answer is read (a closed loop); latency is measured per request, from
writing it to reading the whole answer.
"""

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks import measure

# Seconds one request may take before it counts as an error.
REQUEST_TIMEOUT = 30.0


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float] = field(repr=False)
    statuses: Counter
    errors: list[str]

    def accepted(self, status: int = 202) -> int:
        return self.statuses.get(status, 0)

    def summary(self, status: int = 202) -> dict:
        ordered = sorted(self.latencies)
        return {
            "requests": self.requests,
            "accepted": self.accepted(status),
            "seconds": round(self.seconds, 2),
            "accepted_per_second": round(self.accepted(status) / self.seconds, 1),
            "p50_ms": round(measure.percentile(ordered, 0.50) * 1000, 1),
            "p90_ms": round(measure.percentile(ordered, 0.90) * 1000, 1),
            "p99_ms": round(measure.percentile(ordered, 0.99) * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1) if ordered else None,
            "statuses": {str(code): count for code, count in sorted(self.statuses.items())},
            "errors": len(self.errors) + self.requests - self.accepted(status),
            "first_errors": self.errors[:5],
        }


def post_json(path: str, body: dict, *, port: int, token: str = "") -> bytes:
    """The bytes of one POST with a JSON body."""
    payload = json.dumps(body).encode()
    auth = f"Authorization: Token {token}\r\n" if token else ""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{auth}"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


def run(
    port: int, make_request: Callable[[int], bytes], *, requests: int, clients: int
) -> LoadResult:
    """Send requests 0..requests-1 (`make_request(i)` gives the bytes) from `clients` clients."""
    return asyncio.run(_run(port, make_request, requests, clients))


async def _run(port: int, make_request, requests: int, clients: int) -> LoadResult:
    numbers = iter(range(requests))
    latencies: list[float] = []
    statuses: Counter = Counter()
    errors: list[str] = []
    started = time.perf_counter()
    await asyncio.gather(
        *(_client(port, numbers, make_request, latencies, statuses, errors) for _ in range(clients))
    )
    return LoadResult(requests, time.perf_counter() - started, latencies, statuses, errors)


async def _client(port, numbers, make_request, latencies, statuses, errors) -> None:
    connection = None
    for i in numbers:
        request = make_request(i)
        start = time.perf_counter()
        try:
            if connection is None:
                connection = await asyncio.open_connection("127.0.0.1", port)
            reader, writer = connection
            writer.write(request)
            status, keep_alive = await asyncio.wait_for(_read_response(reader), REQUEST_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            errors.append(f"request {i}: {type(exc).__name__}: {exc}")
            connection = _close(connection)
            continue
        latencies.append(time.perf_counter() - start)
        statuses[status] += 1
        if not keep_alive:
            connection = _close(connection)
    _close(connection)


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers.get("connection", "").lower() != "close"


def _close(connection) -> None:
    if connection is not None:
        connection[1].close()
    return None

"""A loopback HTTP/1.1 upstream that answers every request after a fixed delay.

    python -m benchmarks.upstream --port 8123 --delay 2

asyncio streams, keep-alive, one coroutine per connection: it holds thousands of concurrent
connections in one thread and spends its time sleeping, so it never limits a benchmark.
Every answer is `{"ok": true, "n": <requests so far>, "peak": <most requests held at once
so far>}`: the requests' results then say how many calls the executor really had open
together, whatever its own records say. SIGTERM stops it.
"""

import argparse
import asyncio
import json
import signal

# Listen backlog: the executor opens up to its concurrency of connections at once.
BACKLOG = 2048
# Longest header block accepted; the executor's requests are far smaller.
MAX_HEADER_BYTES = 64 * 1024


class Upstream:
    def __init__(self, delay: float):
        self.delay = delay
        self.answered = 0
        self.held = 0
        self.peak = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEADER_BYTES:
            return False
        headers = _headers(head)
        length = int(headers.get("content-length", "0"))
        if length:
            await reader.readexactly(length)
        self.held += 1
        self.peak = max(self.peak, self.held)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.held -= 1
        self.answered += 1
        body = json.dumps({"ok": True, "n": self.answered, "peak": self.peak}).encode()
        keep_alive = headers.get("connection", "").lower() != "close"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nConnection: %s\r\n\r\n%s"
            % (len(body), b"keep-alive" if keep_alive else b"close", body)
        )
        await writer.drain()
        return keep_alive


def _headers(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    pairs = (line.partition(":") for line in lines if ":" in line)
    return {name.strip().lower(): value.strip() for name, _, value in pairs}


async def main(port: int, delay: float) -> None:
    upstream = Upstream(delay)
    server = await asyncio.start_server(
        upstream.serve, "127.0.0.1", port, backlog=BACKLOG, limit=MAX_HEADER_BYTES
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(f"upstream listening on 127.0.0.1:{port}, delay {delay}s", flush=True)
    async with server:
        await stop.wait()
    print(f"upstream answered {upstream.answered}, at most {upstream.peak} at once", flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=2.0, help="seconds before each answer")
    args = parser.parse_args()
    asyncio.run(main(args.port, args.delay))

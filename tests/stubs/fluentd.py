"""A loopback Fluentd: the forward protocol (msgpack over TCP), as fluent-logger speaks it."""

import io
import socketserver
import threading

import msgpack


class FluentdReceiver:
    """Accepts forward-protocol connections and keeps every (tag, record) it decodes: message
    mode `[tag, time, record(, option)]`, forward mode `[tag, [[time, record], ...](, option)]`
    and packed forward `[tag, bin, option]`; acknowledges chunks when asked to."""

    def __init__(self):
        self.records: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self):
                unpacker = msgpack.Unpacker(raw=False)
                while data := self.request.recv(65536):
                    unpacker.feed(data)
                    for entry in unpacker:
                        receiver._take(entry, self.request)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _take(self, entry, connection) -> None:
        tag, second, *rest = entry
        if isinstance(second, list):
            events, option = second, (rest[0] if rest else None)
        elif isinstance(second, bytes):
            events, option = list(msgpack.Unpacker(io.BytesIO(second), raw=False)), rest[0]
        else:
            events, option = [(second, rest[0])], (rest[1] if len(rest) > 1 else None)
        with self._lock:
            self.records.extend((tag, record) for _, record in events)
        if isinstance(option, dict) and option.get("chunk"):
            connection.sendall(msgpack.packb({"ack": option["chunk"]}))

    def snapshot(self) -> list[tuple[str, dict]]:
        with self._lock:
            return list(self.records)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

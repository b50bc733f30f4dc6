"""A throwaway PostgreSQL server for tests that need real row-level concurrency.

DATABASE_URL (postgres://…) is used when given. Otherwise the server binaries are looked up
(PATH, then /usr/lib/postgresql/*/bin); a cluster is initialised in a temporary directory and
started on a free loopback port. `.ci/run` installs PostgreSQL so CI always has one; on a
machine without it the tests that need it skip with a message saying how to get it.
"""

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from infra.embedded import free_port

INSTALL_HINT = "apt-get install postgresql (or set DATABASE_URL=postgres://…)"


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresServer:
    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="svc-pg-"))
        self.port = free_port()
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def start(self) -> str:
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if not (initdb and pg_ctl):
            raise FileNotFoundError(f"PostgreSQL server binaries not found: {INSTALL_HINT}")
        if self.as_user:
            shutil.chown(self.dir, "postgres")
        data, log = self.dir / "data", self.dir / "log"
        self._run(initdb, "-D", data, "-A", "trust", "-U", "svc", "--no-sync")
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(pg_ctl, "-D", data, "-o", options, "-l", log, "-w", "start")
        self._pg_ctl = pg_ctl
        return f"postgres://svc@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if getattr(self, "_pg_ctl", None):
            self._run(self._pg_ctl, "-D", self.dir / "data", "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def _run(self, *args) -> None:
        result = subprocess.run([*self.as_user, *map(str, args)], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(str(args[0])).name} failed: {result.stderr.strip()[-500:]}")


def create_database(server_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server_url.replace("postgres://", "postgresql://"), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}"')
        c.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0] + f"/{name}"

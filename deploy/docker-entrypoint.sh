#!/bin/sh
# The image's entrypoint (Dockerfile, deploy/compose.yaml): refuses .env.example's change-me-…
# placeholders, waits until the stores accept TCP connections, migrates when
# SVC_MIGRATE_ON_START=1, then runs the command in this process's place, so the process
# signals reach (SIGTERM: drain and stop) is the command itself.
#
#   SVC_WAIT_FOR_STORES_SECONDS  how long to wait for the stores (default 60; 0: do not wait)
#   SVC_MIGRATE_ON_START         1: `manage.py migrate --noinput` first (a one-container
#                                deploy; compose runs its own `migrate` service instead)
#
# The stores are the hosts of DATABASE_URL (unless SQLite), MONGO_URI and REDIS_URL, or of
# REDIS_SENTINELS (host:port, comma-separated) when it is set: one answering host per store is
# enough. Nothing printed here names more than a host and port: URLs carry passwords.
set -eu

python - <<'WAIT_FOR_STORES'
import os
import socket
import sys
import time

# Port of each scheme when its URL names none.
DEFAULT_PORTS = {
    "postgres": 5432, "postgresql": 5432, "pgsql": 5432, "postgis": 5432,
    "mysql": 3306, "mysqlgis": 3306, "mongodb": 27017, "redis": 6379, "rediss": 6379,
}


def hosts_of(url):
    """[(host, port)] of a store URL (several for mongodb://a,b,c); [] for none to wait on."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.split("+")[0].lower()  # postgresql+psycopg -> postgresql
    if not sep or scheme.startswith("sqlite") or url.startswith("mongodb+srv"):
        return []  # a file, or hosts that only DNS SRV records name
    netloc = rest.split("/")[0].split("?")[0].rpartition("@")[2]
    return [split_host(item, DEFAULT_PORTS.get(scheme)) for item in netloc.split(",") if item]


def split_host(item, default_port):
    if item.startswith("["):  # [::1]:6379
        host, _, port = item[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = item.partition(":")
    return host, int(port) if port else default_port


def stores():
    """{what: [(host, port)]} to wait for, named by the variable that gives them."""
    wanted = {}
    for name in ("DATABASE_URL", "MONGO_URI"):
        if os.environ.get(name):
            wanted[name] = hosts_of(os.environ[name])
    sentinels = [s.strip() for s in os.environ.get("REDIS_SENTINELS", "").split(",")]
    if any(sentinels):
        wanted["REDIS_SENTINELS"] = [split_host(s, 26379) for s in sentinels if s]
    elif os.environ.get("REDIS_URL"):
        wanted["REDIS_URL"] = hosts_of(os.environ["REDIS_URL"])
    return {name: [h for h in hosts if h[1]] for name, hosts in wanted.items() if hosts}


def answers(host, port):
    try:
        socket.create_connection((host, port), timeout=2).close()
        return True
    except OSError:
        return False


def placeholders():
    """Variables still holding one of .env.example's change-me-… values."""
    return sorted(name for name, value in os.environ.items() if "change-me" in value)


def main():
    if placeholders():
        sys.exit(
            "docker-entrypoint: .env.example's change-me-... placeholders are still in "
            f"{', '.join(placeholders())}: give them real values in .env"
        )
    raw = os.environ.get("SVC_WAIT_FOR_STORES_SECONDS") or "60"
    try:
        budget = float(raw)
    except ValueError:
        sys.exit(f"docker-entrypoint: SVC_WAIT_FOR_STORES_SECONDS={raw!r} is not a number")
    if budget <= 0:
        return
    deadline = time.monotonic() + budget
    waiting = stores()
    while True:
        waiting = {
            name: hosts
            for name, hosts in waiting.items()
            if not any(answers(host, port) for host, port in hosts)
        }
        if not waiting:
            return
        if time.monotonic() >= deadline:
            named = "; ".join(
                f"{name} ({', '.join(f'{h}:{p}' for h, p in hosts)})"
                for name, hosts in waiting.items()
            )
            sys.exit(f"docker-entrypoint: no answer within {budget:g}s from {named}")
        time.sleep(1)


main()
WAIT_FOR_STORES

if [ "${SVC_MIGRATE_ON_START:-0}" = "1" ]; then
    python manage.py migrate --noinput
fi

exec "$@"

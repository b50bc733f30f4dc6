"""`make bench` (python -m benchmarks): every scenario, a table, benchmarks/results.json.

    python -m benchmarks [--only store executor inflight dispatch waiting gateway intake]
                         [--output FILE]
                         [--strict]

Starts its own SecantusDB, redis-server, SQLite, recon, gunicorn and executors on free
loopback ports in a temporary directory (as `make run` deploys them: benchmarks/stack.py), and
stops and removes all of them at the end (also on Ctrl-C). Exits 1 when a scenario could not
run or recon died; with --strict also when a target is missed.
"""

import argparse
import http.client
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

import pymongo
import redis

from benchmarks import (
    dispatch,
    executor_bench,
    gateway,
    inflight,
    intake,
    measure,
    report,
    store,
    waiting,
)
from benchmarks.stack import ROOT, Stack, wait_until
from infra import embedded

# In this order: every scenario reads its references off the store's, and inflight follows
# executor so the upstream's port is free again (each starts its own upstream on it, the
# gateway its chat upstream). The intake runs last: SecantusDB's writes grow dearer with
# every write the server has taken (its registry of retryable writes is scanned on each one,
# docs/benchmarks.md), which bounds the intake's rate in a full run but not its CPU per POST;
# `--only store intake` reads its rate on a fresher server. Run first, it would slow the
# executor scenarios instead.
SCENARIOS = ("store", "executor", "inflight", "dispatch", "waiting", "gateway", "intake")
# Extra gunicorn arguments, to measure a configuration change before making it, e.g.
# BENCH_GUNICORN_ARGS="--worker-connections 8" (the command line wins over the config file).
GUNICORN_ARGS_ENV = "BENCH_GUNICORN_ARGS"
DEFAULT_OUTPUT = ROOT / "benchmarks" / "results.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    started = time.monotonic()
    api_port, upstream_port = embedded.free_port(), embedded.free_port()
    results: dict = {}
    failures: dict[str, str] = {}
    _say("starting SecantusDB, redis-server, migrations, catalog and client")
    with Stack(upstream_port=upstream_port) as stack:
        redis_client = redis.Redis.from_url(stack.redis.uri)
        mongo = pymongo.MongoClient(stack.mongo.uri)
        machine = report.machine(redis_client.info("server")["redis_version"])
        api = None

        def api_process():
            nonlocal api
            if api is None:
                api = stack.gunicorn(api_port, *shlex.split(os.environ.get(GUNICORN_ARGS_ENV, "")))
                wait_until(lambda: _healthy(api_port), timeout=60, what="gunicorn")
            return api

        def through_api(scenario):
            api_process()  # the requests are submitted through the API
            stack.fresh_requests()
            return scenario.run(stack, api_port, upstream_port)

        def intake_scenario():
            api = api_process()
            stack.fresh_requests()
            return intake.run(stack, api, api_port, measure.StoreCounter(mongo, redis_client))

        def waiting_scenario():
            api_process()  # the requests are submitted through the API
            stack.fresh_requests()
            return waiting.run(stack, api_port, upstream_port, embedded.free_port())

        def gateway_scenario():
            api = api_process()  # the first-token calls go through the API as deployed
            stack.fresh_requests()
            return gateway.run(stack, api, api_port, upstream_port, embedded.free_port())

        scenarios = {
            "store": lambda: store.run(stack),
            "waiting": waiting_scenario,
            "gateway": gateway_scenario,
            "executor": lambda: through_api(executor_bench),
            "inflight": lambda: through_api(inflight),
            "dispatch": lambda: dispatch.run(stack),
            "intake": intake_scenario,
        }
        for name in SCENARIOS:
            if name not in args.only:
                continue
            _say(f"running {name}")
            try:
                results[name] = scenarios[name]()
            except Exception as exc:  # one broken scenario must not hide the others' figures
                traceback.print_exc()
                failures[name] = f"{type(exc).__name__}: {exc}"[:2000]
        if why := stack.recon_exited():
            failures["recon"] = why[:2000]
        mongo.close()
        redis_client.close()
    all_rows = report.rows(results)
    print()
    print(report.table(all_rows))
    for name, message in failures.items():
        print(f"\n{name}: did not run to the end: {message.splitlines()[0]}")
    results["failures"] = failures
    results["seconds"] = round(time.monotonic() - started, 1)
    report.write_json(args.output, results, all_rows, machine)
    print(f"\nwrote {args.output} in {results['seconds']:.0f}s")
    if failures:
        return 1
    missed = [row for row in all_rows if row.passed is False]
    return 1 if args.strict and missed else 0


def _healthy(port: int) -> bool:
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        connection.request("GET", "/healthz")
        return connection.getresponse().status == 200
    except OSError:
        return False


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

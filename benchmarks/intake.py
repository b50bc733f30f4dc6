"""Intake: accepted POSTs per second and latency at 32 clients, against a bare DRF view.

Both run in the same gunicorn (deploy/gunicorn.conf.py, with the bench's URLs added). Every
intake POST has its own inputs, so each one creates a request (202). CPU time per accepted
request is that of the gunicorn master and workers together, read from /proc.
"""

import os

from benchmarks import load, measure
from benchmarks.stack import ECHO_OFFER, Stack

CLIENTS = 32
REQUESTS = 3000
# Requests sent to each endpoint before measuring: imports, connections and caches warm up.
WARMUP = 300
BARE_PATH = "/bench/bare/"
INTAKE_PATH = "/svc/{}/{}/".format(*ECHO_OFFER)


def _requests(stack: Stack, port: int, path: str, tag: str):
    def make(i: int) -> bytes:
        return load.post_json(path, {"n": f"{tag}-{i}"}, port=port, token=stack.token)

    return make


def _measure(stack: Stack, api, port: int, path: str, tag: str, counter=None) -> dict:
    cpu = measure.CpuMeter(
        {
            "api": api.pid,
            "mongo": stack.mongo.process.pid,
            "redis": stack.redis.process.pid,
            "load_generator": os.getpid(),
        },
        alone=("load_generator",),
    )
    if counter:
        counter.start()
    cpu.start()
    result = load.run(port, _requests(stack, port, path, tag), requests=REQUESTS, clients=CLIENTS)
    cpu.stop()
    summary = result.summary()
    accepted = max(result.accepted(), 1)
    summary["api_cpu_ms_per_accepted"] = round(cpu.seconds["api"] / accepted * 1000, 2)
    summary["cores_busy"] = cpu.cores(result.seconds)
    if counter:
        summary["stores_per_request"] = counter.stop().per_request(accepted)
    return summary


def run(stack: Stack, api, port: int, counter: measure.StoreCounter) -> dict:
    for path, tag in ((BARE_PATH, "warm-bare"), (INTAKE_PATH, "warm-intake")):
        warm = load.run(port, _requests(stack, port, path, tag), requests=WARMUP, clients=CLIENTS)
        if warm.accepted() != WARMUP:
            raise RuntimeError(f"warm-up of {path} failed: {warm.summary()}")
    return {
        "clients": CLIENTS,
        "bare": _measure(stack, api, port, BARE_PATH, "bare"),
        "intake": _measure(stack, api, port, INTAKE_PATH, "intake", counter),
    }

"""What the scenarios read off the machine: CPU and memory of process trees, store counters."""

import threading
import time
from dataclasses import dataclass

import psutil
import pymongo
import redis

# Seconds between two memory samples of a process tree.
RSS_SAMPLE_SECONDS = 0.1


def tree(pid: int) -> list[psutil.Process]:
    """The process and its live descendants (gunicorn workers, RQ's scheduler)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def cpu_seconds(pid: int, children: bool = True) -> float:
    """user + system CPU seconds of the process (and its live children) so far."""
    total = 0.0
    processes = tree(pid) if children else tree(pid)[:1]
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


class CpuMeter:
    """CPU seconds each named process tree spent between `start()` and `stop()`.

    Names in `alone` count the process without its children (the bench itself, whose
    children are the servers measured under their own names).
    """

    def __init__(self, pids: dict[str, int], alone: tuple[str, ...] = ()):
        self.pids = pids
        self.alone = alone
        self._start: dict[str, float] = {}
        self.seconds: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        return {
            name: cpu_seconds(pid, children=name not in self.alone)
            for name, pid in self.pids.items()
        }

    def start(self) -> "CpuMeter":
        self._start = self._read()
        return self

    def stop(self) -> dict[str, float]:
        now = self._read()
        self.seconds = {name: round(now[name] - self._start[name], 3) for name in self.pids}
        return self.seconds

    def cores(self, wall: float) -> dict[str, float]:
        """Average cores each tree kept busy: 1.0 is one core saturated."""
        return {name: round(seconds / wall, 2) for name, seconds in self.seconds.items()}


def rss_mb(pid: int) -> float:
    """Resident memory of one process now (VmRSS), in MB."""
    return _status_mb(pid, "VmRSS:")


def vm_hwm_mb(pid: int) -> float:
    """Peak resident memory of one process (VmHWM), in MB."""
    return _status_mb(pid, "VmHWM:")


def _status_mb(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return 0.0


class RssSampler(threading.Thread):
    """Samples the resident memory of a process tree; `peak_mb` is the highest sum seen."""

    def __init__(self, pid: int):
        super().__init__(daemon=True, name="rss-sampler")
        self.pid = pid
        self.peak_mb = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            total = 0
            for process in tree(self.pid):
                try:
                    total += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self._stop_event.wait(RSS_SAMPLE_SECONDS)

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        return round(self.peak_mb, 1)


@dataclass
class StoreCounts:
    """Operations the stores saw between two snapshots (Mongo opcounters, Redis commandstats)."""

    mongo: dict[str, int]
    redis_calls: int

    def mongo_writes(self) -> int:
        return self.mongo["insert"] + self.mongo["update"] + self.mongo["delete"]

    def mongo_reads(self) -> int:
        return self.mongo["query"] + self.mongo["getmore"]

    def per_request(self, n: int) -> dict[str, float]:
        return {
            "mongo_writes": round(self.mongo_writes() / n, 2),
            "mongo_reads": round(self.mongo_reads() / n, 2),
            "mongo_by_op": {op: round(count / n, 2) for op, count in self.mongo.items() if count},
            "redis_commands": round(self.redis_calls / n, 1),
        }


class StoreCounter:
    def __init__(self, mongo: pymongo.MongoClient, redis_client: redis.Redis):
        self.mongo = mongo
        self.redis = redis_client
        self._before: tuple[dict, int] | None = None

    def _snapshot(self) -> tuple[dict, int]:
        ops = dict(self.mongo.admin.command("serverStatus")["opcounters"])
        stats = self.redis.info("commandstats")
        return ops, sum(int(v["calls"]) for v in stats.values())

    def start(self) -> "StoreCounter":
        self._before = self._snapshot()
        return self

    def stop(self, own_redis_commands: int = 0) -> StoreCounts:
        """The counts since `start()`, less the bench's own: its snapshots, and the
        `own_redis_commands` it sent meanwhile (polls for progress)."""
        ops, calls = self._snapshot()
        before_ops, before_calls = self._before
        mongo = {op: ops[op] - before_ops.get(op, 0) for op in ops}
        # serverStatus and INFO are themselves counted once each; they are not the app's.
        mongo["command"] = max(0, mongo.get("command", 0) - 1)
        redis_calls = calls - before_calls - 1 - own_redis_commands
        return StoreCounts(mongo=mongo, redis_calls=redis_calls)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, round(fraction * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def timed(fn):
    """(result, seconds) of calling fn()."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start

"""Figures beside their ceilings and targets: the printed table and benchmarks/results.json."""

import importlib.metadata
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.stack import ROOT

# Targets of the issue (docs/benchmarks.md says where each comes from).
EXECUTOR_IDEAL_FACTOR = 1.15  # wall time within 1.15× of N × latency / C ...
EXECUTOR_STORE_SHARE = 0.85  # ... or ≥ 0.85 of the store ceiling, whichever is lower
EXECUTOR_PEAK_RSS_MB = 400
DISPATCH_SHARE = 0.70  # of RQ's SimpleWorker
INTAKE_SHARE = 0.80  # of the lower of the bare view and the store ceiling
INTAKE_P99_MS = 100
# Mongo writes one request's lifecycle needs: insert (queued), running, succeeded.
LIFECYCLE_MONGO_WRITES = 3


@dataclass
class Row:
    scenario: str
    figure: str
    ceiling: str
    ratio: float | None
    target: str
    passed: bool | None  # None: reported, no target

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "FAIL", None: "-"}[self.passed]


def rows(results: dict) -> list[Row]:
    out: list[Row] = []
    if "store" in results:
        out += _store_rows(results["store"])
    if "executor" in results:
        out += _executor_rows(results["executor"], results.get("store"))
    if "dispatch" in results:
        out += _dispatch_rows(results["dispatch"])
    if "intake" in results:
        out += _intake_rows(results["intake"], results.get("store"))
    if "executor" in results and "intake" in results:
        out.append(_mongo_writes_row(results))
    return out


def _store_rows(store: dict) -> list[Row]:
    out = []
    for name in ("intake", "execution"):
        every, mongo = store[name], store[f"{name}_mongo_only"]
        out.append(
            Row(
                f"store ceiling: {name} ops, {every['concurrency']} at once",
                f"{every['requests_per_second']:.0f} req/s (mongo {_cores(every, 'mongo')})",
                f"mongo alone {mongo['requests_per_second']:.0f} req/s "
                f"(mongo {_cores(mongo, 'mongo')})",
                _ratio(every["requests_per_second"], mongo["requests_per_second"]),
                "(ceiling)",
                None,
            )
        )
    return out


def _executor_rows(executor: dict, store: dict | None) -> list[Row]:
    rate = executor["requests_per_second"]
    ideal_rate = executor["requests"] / executor["ideal_s"]
    store_rate = store["execution"]["requests_per_second"] if store else float("inf")
    ceiling = min(ideal_rate, store_rate)
    target = min(ideal_rate / EXECUTOR_IDEAL_FACTOR, EXECUTOR_STORE_SHARE * store_rate)
    binding = "ideal" if ideal_rate <= store_rate else "store"
    return [
        Row(
            f"executor: {executor['requests']} × {executor['upstream_delay_s']:g} s, "
            f"C={executor['concurrency']}",
            f"{rate:.1f} req/s (wall {executor['wall_s']:.1f} s)",
            f"{ceiling:.1f} req/s ({binding}; ideal {executor['ideal_s']:g} s, "
            f"store {store_rate:.0f} req/s)",
            _ratio(rate, ceiling),
            f">= {target:.1f} req/s",
            rate >= target,
        ),
        Row(
            "executor: peak RSS",
            f"{executor['peak_rss_mb']:.0f} MB",
            "-",
            None,
            f"<= {EXECUTOR_PEAK_RSS_MB} MB",
            executor["peak_rss_mb"] <= EXECUTOR_PEAK_RSS_MB,
        ),
    ]


def _dispatch_rows(dispatch: dict) -> list[Row]:
    ours = dispatch["executor"]["jobs_per_second"]
    simple = dispatch["simple_worker"]["jobs_per_second"]
    return [
        Row(
            "dispatch: no-op jobs, one process",
            f"{ours:.0f} jobs/s",
            f"SimpleWorker {simple:.0f} jobs/s",
            _ratio(ours, simple),
            f">= {DISPATCH_SHARE:.2f}x",
            ours >= DISPATCH_SHARE * simple,
        )
    ]


def _intake_rows(intake: dict, store: dict | None) -> list[Row]:
    ours, bare = intake["intake"], intake["bare"]
    store_rate = store["intake"]["requests_per_second"] if store else float("inf")
    ceiling = min(bare["accepted_per_second"], store_rate)
    binding = "bare view" if bare["accepted_per_second"] <= store_rate else "store"
    rate = ours["accepted_per_second"]
    return [
        Row(
            f"intake: accepted POSTs, {intake['clients']} clients",
            f"{rate:.0f} req/s",
            f"{ceiling:.0f} req/s ({binding}; bare {bare['accepted_per_second']:.0f}, "
            f"store {store_rate:.0f})",
            _ratio(rate, ceiling),
            f">= {INTAKE_SHARE:.2f}x",
            rate >= INTAKE_SHARE * ceiling,
        ),
        Row(
            "intake: p99 latency",
            f"{ours['p99_ms']:.0f} ms (p50 {ours['p50_ms']:.0f})",
            f"bare p99 {bare['p99_ms']:.0f} ms (p50 {bare['p50_ms']:.0f})",
            None,
            f"<= {INTAKE_P99_MS} ms",
            ours["p99_ms"] <= INTAKE_P99_MS,
        ),
        Row(
            "intake: errors",
            str(ours["errors"]),
            "-",
            None,
            "0",
            ours["errors"] == 0,
        ),
        Row(
            "intake: API CPU per accepted request",
            f"{ours['api_cpu_ms_per_accepted']:.2f} ms",
            f"bare {bare['api_cpu_ms_per_accepted']:.2f} ms",
            None,
            "(reported)",
            None,
        ),
    ]


def _mongo_writes_row(results: dict) -> Row:
    intake = results["intake"]["intake"]["stores_per_request"]["mongo_writes"]
    execution = results["executor"]["stores_per_request"]["mongo_writes"]
    total = intake + execution
    return Row(
        "Mongo writes per request",
        f"{total:g} (intake {intake:g} + execution {execution:g})",
        f"lifecycle needs {LIFECYCLE_MONGO_WRITES}",
        None,
        f"<= {LIFECYCLE_MONGO_WRITES}",
        total <= LIFECYCLE_MONGO_WRITES,
    )


def _cores(summary: dict, name: str) -> str:
    return f"{summary['cores_busy'][name]:.2f} cores"


def _ratio(figure: float, ceiling: float) -> float | None:
    return round(figure / ceiling, 2) if ceiling else None


def table(all_rows: list[Row]) -> str:
    header = ("scenario", "figure", "ceiling", "ratio", "target", "pass/fail")
    cells = [header] + [
        (
            r.scenario,
            r.figure,
            r.ceiling,
            "-" if r.ratio is None else f"{r.ratio:.2f}",
            r.target,
            r.verdict,
        )
        for r in all_rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in cells
    ]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def machine(redis_version: str) -> dict:
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "secantusdb": _version("SecantusDB"),
        "redis_server": redis_version,
        "packages": {
            name: _version(name)
            for name in ("Django", "djangorestframework", "rq", "redis", "pymongo", "gunicorn")
        },
        "commit": _git("rev-parse", "--short", "HEAD"),
        "tree_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return out.stdout.strip()


def write_json(path: Path, results: dict, all_rows: list[Row], machine_info: dict) -> None:
    document = {
        "machine": machine_info,
        "table": [{**asdict(r), "verdict": r.verdict} for r in all_rows],
        "results": results,
    }
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")

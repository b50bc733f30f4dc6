"""Figures beside their references and targets: the printed table and benchmarks/results.json."""

import importlib.metadata
import json
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.stack import ROOT

# Targets of issue 16. Each figure is read against a reference measured in the same run
# (a store replay, the bare view, SimpleWorker, the executor's concurrency), except the CPU
# per request, which is also held to a sixth of the recorded baseline.
EXECUTOR_STORE_SHARE = 0.85  # requests/s, of the execution store ceiling
EXECUTOR_IN_FLIGHT_SHARE = 0.90  # requests running while work is queued, of the concurrency
EXECUTOR_CPU_VS_REPLAY = 2.0  # CPU per executed request, against the store replay client's
EXECUTOR_REDIS_COMMANDS = 12  # per executed request
EXECUTOR_PEAK_RSS_MB = 400
# Mongo writes one request's lifecycle needs: insert (queued), running, succeeded.
LIFECYCLE_MONGO_WRITES = 3
INFLIGHT_AT_ONCE = 950  # of 1,000 requests, by their own times and by the upstream's count
INFLIGHT_PEAK_RSS_MB = 500
DISPATCH_SHARE = 1.0  # of RQ's SimpleWorker
# Issue 17: 1,000 clients waiting on one API process, every one answered when its request ends.
WAITING_CLIENTS = 1000
# Issue 18: the first token reaches the client within 50 ms of its arrival at the executor
# (the upstream's x_sent, on loopback), p99; every stream ends with [DONE] and the whole reply.
GATEWAY_FIRST_TOKEN_RELAY_MS = 50
# A gateway call's time to first token, in order (benchmarks/gateway.py, _stages).
GATEWAY_STAGES = ("intake", "enqueue", "pickup", "job", "call", "relay")
INTAKE_STORE_SHARE = 0.80  # accepted/s, of the intake store ceiling
INTAKE_P99_VS_REPLAY = 1.5  # against the intake store replay's p99 at the same concurrency
INTAKE_CPU_VS_BARE = 2.5  # API CPU per accepted POST, against the bare view's per request
# The recorded baseline (docs/benchmarks.md): CPU per request of the executor and of the API.
BASELINE_COMMIT = "6f5adc9"
EXECUTOR_BASELINE_CPU_MS = 32.1
INTAKE_BASELINE_CPU_MS = 16.61
BASELINE_SHARE = 1 / 6


@dataclass
class Row:
    scenario: str
    figure: str
    reference: str
    ratio: float | None  # figure / reference, when the target is a ratio
    target: str
    passed: bool | None  # None: reported, no target (or its reference did not run)

    @property
    def verdict(self) -> str:
        return {True: "pass", False: "miss", None: "-"}[self.passed]


def rows(results: dict) -> list[Row]:
    store = results.get("store")
    out: list[Row] = []
    if store:
        out += _store_rows(store)
    if "executor" in results:
        out += _executor_rows(results["executor"], store)
    if "inflight" in results:
        out += _inflight_rows(results["inflight"])
    if "dispatch" in results:
        out += _dispatch_rows(results["dispatch"])
    if "waiting" in results:
        out += _waiting_rows(results["waiting"])
    if "gateway" in results:
        out += _gateway_rows(results["gateway"])
    if "intake" in results:
        out += _intake_rows(results["intake"], store)
    return out


def _bound(at_most: float | None, at_least: float | None, unit: str = "") -> tuple:
    """(the target's text, a test of a value against it): exactly one bound is given."""
    if at_most is not None:
        return f"<= {at_most:g}{unit}", lambda value: value <= at_most
    return f">= {at_least:g}{unit}", lambda value: value >= at_least


def _relative(
    scenario: str,
    figure: str,
    value: float,
    reference: str,
    reference_value: float | None,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
) -> Row:
    """A target on figure / reference. With no reference value (its scenario did not run)
    the row is reported without a verdict."""
    target, test = _bound(at_most, at_least, "x")
    if not reference_value:
        return Row(scenario, figure, reference, None, target, None)
    ratio = value / reference_value
    return Row(scenario, figure, reference, round(ratio, 2), target, test(ratio))


def _absolute(
    scenario: str,
    figure: str,
    value: float,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
    unit: str = "",
) -> Row:
    target, test = _bound(at_most, at_least, unit)
    return Row(scenario, figure, "-", None, target, test(value))


def _store_rows(store: dict) -> list[Row]:
    out = []
    for name in ("intake", "execution"):
        every, mongo = store[name], store[f"{name}_mongo_only"]
        out.append(
            Row(
                f"store ceiling: {name} ops, {every['concurrency']} at once",
                f"{every['requests_per_second']:.0f} req/s (mongo {_cores(every, 'mongo')}, "
                f"p99 {every['p99_ms']:.0f} ms, client {every['client_cpu_ms_per_request']:.2f}"
                " ms CPU/req)",
                f"mongo alone {mongo['requests_per_second']:.0f} req/s "
                f"(mongo {_cores(mongo, 'mongo')})",
                _ratio(every["requests_per_second"], mongo["requests_per_second"]),
                "(ceiling)",
                None,
            )
        )
    return out


def _executor_rows(executor: dict, store: dict | None) -> list[Row]:
    name = (
        f"executor: {executor['requests']} × {executor['upstream_delay_s']:g} s, "
        f"C={executor['concurrency']}"
    )
    replay = store["execution"] if store else {}
    cpu = executor["executor_cpu_ms_per_request"]
    intake_writes = executor["intake_stores_per_request"]["mongo_writes"]
    execution_writes = executor["stores_per_request"]["mongo_writes"]
    return [
        _executor_rate_row(name, executor, store),
        _relative(
            "executor: mean in flight while work is queued",
            f"{executor['mean_in_flight_while_queued']:.0f} "
            f"(first start to last finish: {executor['mean_in_flight']:.0f})",
            executor["mean_in_flight_while_queued"],
            f"concurrency {executor['concurrency']}",
            executor["concurrency"],
            at_least=EXECUTOR_IN_FLIGHT_SHARE,
        ),
        _relative(
            "executor: CPU per executed request",
            f"{cpu:.2f} ms",
            cpu,
            _replay("execution client CPU", replay.get("client_cpu_ms_per_request"), "ms"),
            replay.get("client_cpu_ms_per_request"),
            at_most=EXECUTOR_CPU_VS_REPLAY,
        ),
        _baseline_row("executor: CPU per executed request", cpu, EXECUTOR_BASELINE_CPU_MS),
        _absolute(
            "executor: Redis commands per executed request",
            f"{executor['stores_per_request']['redis_commands']:g}",
            executor["stores_per_request"]["redis_commands"],
            at_most=EXECUTOR_REDIS_COMMANDS,
        ),
        _absolute(
            "executor: Mongo writes per request",
            f"{intake_writes + execution_writes:g} "
            f"(intake {intake_writes:g} + execution {execution_writes:g})",
            intake_writes + execution_writes,
            at_most=LIFECYCLE_MONGO_WRITES,
        ),
        _absolute(
            "executor: peak RSS",
            f"{executor['peak_rss_mb']:.0f} MB (tree {executor['tree_peak_rss_mb']:.0f} MB)",
            executor["peak_rss_mb"],
            at_most=EXECUTOR_PEAK_RSS_MB,
            unit=" MB",
        ),
    ]


def _executor_rate_row(name: str, executor: dict, store: dict | None) -> Row:
    """Requests/s against the execution store ceiling, or against the ideal N × latency / C
    when that is lower: no executor can beat its upstream's latency."""
    rate = executor["requests_per_second"]
    ideal = executor["requests"] / executor["ideal_s"]
    ceiling = store["execution"]["requests_per_second"] if store else None
    if ceiling is None:
        reference, value = f"needs the store scenario (ideal {ideal:.0f} req/s)", None
    elif ceiling <= ideal:
        reference, value = f"store ceiling {ceiling:.0f} req/s (ideal {ideal:.0f})", ceiling
    else:
        reference, value = f"ideal {ideal:.0f} req/s (store ceiling {ceiling:.0f})", ideal
    return _relative(
        name,
        f"{rate:.1f} req/s (wall {executor['wall_s']:.1f} s)",
        rate,
        reference,
        value,
        at_least=EXECUTOR_STORE_SHARE,
    )


def _waiting_rows(waiting: dict) -> list[Row]:
    n = waiting["clients"]
    lag = waiting.get("end_lag_ms_p99")
    return [
        _absolute(
            f"waiting: {n} SSE streams on one API process, opened (in {waiting['open_s']:.1f} s)",
            f"{waiting['opened']} of {n}",
            waiting["opened"],
            at_least=WAITING_CLIENTS,
        ),
        _absolute(
            "waiting: streams that carried their request's end",
            f"{waiting['answered']} of {n} (errors {waiting['errors']})",
            waiting["answered"],
            at_least=WAITING_CLIENTS,
        ),
        Row(
            "waiting: API process while they wait",
            f"{waiting['api_rss_waiting_mb']:.0f} MB RSS, {waiting['api_cores_waiting']:.3f} cores",
            "-",
            None,
            "(reported)",
            None,
        ),
        Row(
            "waiting: API CPU per end; end → client, published → client",
            f"{waiting['api_cpu_ms_per_answer']:.2f} ms; p50 {waiting['end_lag_ms_p50']} / "
            f"p99 {lag} ms; p50 {waiting.get('delivery_ms_p50')} / p99 "
            f"{waiting.get('delivery_ms_p99')} ms (client {waiting.get('client_cores_delivering')}"
            " cores)",
            "-",
            None,
            "(reported)",
            None,
        ),
    ]


def _gateway_rows(gateway: dict) -> list[Row]:
    first, load = gateway["first_token"], gateway["throughput"]
    ours, direct, stages = first["gateway"], first["direct"], first["gateway_stages"]
    n, per_1k = first["calls"], load["cpu_ms_per_1k_chunks"]
    rows = []
    relay = ours["relay_ms_p99"]
    if relay is None:
        rows.append(
            Row(
                "gateway: first token relay p99 (upstream→client)",
                "no call",
                "-",
                None,
                f"<= {GATEWAY_FIRST_TOKEN_RELAY_MS:g} ms",
                False,
            )
        )
    else:
        rows.append(
            _absolute(
                "gateway: first token relay p99 (upstream→client)",
                f"{relay:g} ms (p50 {ours['relay_ms_p50']:g}; direct p50 "
                f"{direct['relay_ms_p50']} / p99 {direct['relay_ms_p99']} ms)",
                relay,
                at_most=GATEWAY_FIRST_TOKEN_RELAY_MS,
                unit=" ms",
            )
        )
    for q in ("p50", "p99"):
        value, reference = ours[f"after_post_ms_{q}"], direct[f"after_post_ms_{q}"]
        rows.append(
            Row(
                f"gateway: first token after POST {q} (vs direct to the upstream)",
                f"{value} ms ({n} sequential calls, {first['reply_tokens']} tokens)",
                f"direct {reference} ms",
                _ratio(value, reference) if value is not None and reference else None,
                "(reported)",
                None,
            )
        )
    rows.append(
        Row(
            "gateway: first token after POST p50, by stage (ms)",
            " + ".join(f"{name} {stages[f'{name}_ms_p50']}" for name in GATEWAY_STAGES),
            "p99: " + " / ".join(f"{stages[f'{name}_ms_p99']}" for name in GATEWAY_STAGES),
            None,
            "(reported)",
            None,
        )
    )
    rows.append(
        _absolute(
            "gateway: first-token calls with errors",
            f"{first['errors']} of {2 * n} (gateway {ours['errors']}, direct {direct['errors']})"
            + (f": {first['first_error']}" if first["first_error"] else ""),
            first["errors"],
            at_most=0,
        )
    )
    streams = load["streams"]
    rows += [
        Row(
            "gateway: chunks/s relayed by one API process",
            f"{load['chunks_per_second']:.0f} chunks/s ({streams} streams × "
            f"{load['reply_tokens']} tokens in {load['wall_s']:.1f} s; first to last chunk "
            f"{load['chunks_per_second_streaming']:.0f}/s)",
            f"every process measured: {sum(load['cores_busy'].values()) + load['client_cores']:.2f}"
            " cores busy",
            None,
            "(reported)",
            None,
        ),
        _absolute(
            "gateway: streams ended with [DONE] and the whole reply",
            f"{load['complete']} of {streams} (errors {load['errors']}; chunks "
            f"{load['chunks']} of {load['chunks_expected']}; {_statuses(load['statuses'])})"
            + (f": {load['first_error']}" if load["first_error"] else ""),
            load["complete"],
            at_least=streams,
        ),
        Row(
            "gateway: API CPU ms per 1,000 chunks",
            f"{per_1k['api']} ms (one worker, {load['cores_busy']['api']:.2f} cores)",
            _threads(load, "api", "WSGI, pymongo"),
            None,
            "(reported)",
            None,
        ),
        Row(
            "gateway: executor CPU ms per 1,000 chunks",
            f"{per_1k['executor']} ms ({load['cores_busy']['executor']:.2f} cores; Redis "
            f"{per_1k['redis']} ms, {load['cores_busy']['redis']:.2f} cores)",
            _threads(load, "executor", "jobs"),
            None,
            "(reported)",
            None,
        ),
        Row(
            "gateway: the main API's CPU ms per 1,000 chunks (none of its streams)",
            f"{_beyond_quiet(load, 'main_api')} ms beyond its quiet CPU "
            f"({per_1k['main_api']} ms in all): it hears every chunk",
            f"quiet {load['cores_quiet']['main_api']:.3f} cores, loaded "
            f"{load['cores_busy']['main_api']:.2f}",
            None,
            "(reported)",
            None,
        ),
        Row(
            "gateway: chunk backlog under that load (x_sent→client, all sent at once)",
            f"p50 {load['chunk_lag_ms_p50']} / p99 {load['chunk_lag_ms_p99']} ms",
            f"client {load['client_cores']} cores, upstream {per_1k['upstream']} ms / 1k",
            None,
            "(reported)",
            None,
        ),
    ]
    return rows


def _threads(load: dict, name: str, others: str) -> str:
    """The reference text of a process's CPU by thread: its event loop, the rest."""
    split = load.get("threads_cpu_s", {}).get(name)
    if not split:
        return "-"
    return (
        f"loop thread {split['busiest']:.2f} s, {split['threads'] - 1} others ({others}) "
        f"{split['others']:.2f} s, in {load['wall_s']:.1f} s"
    )


def _beyond_quiet(load: dict, name: str) -> float | None:
    """CPU ms per 1,000 chunks a process spent above its quiet rate."""
    if not load["chunks"]:
        return None
    extra = load["cpu_s"][name] - load["cores_quiet"][name] * load["wall_s"]
    return round(max(0.0, extra) * 1e6 / load["chunks"], 1)


def _inflight_rows(inflight: dict) -> list[Row]:
    n = inflight["requests"]
    peak = inflight.get("peak_overlap", 0)
    upstream_peak = inflight["upstream_peak_in_flight"]
    rows = [
        _absolute(
            f"inflight: {n} × {inflight['upstream_delay_s']:g} s, C={inflight['concurrency']}, "
            "peak running (own times)",
            f"{peak} of {n}",
            peak,
            at_least=INFLIGHT_AT_ONCE,
        ),
        _absolute(
            "inflight: peak calls the upstream held at once",
            f"{upstream_peak} of {n}",
            upstream_peak,
            at_least=INFLIGHT_AT_ONCE,
        ),
        _absolute(
            "inflight: executor peak RSS",
            f"{inflight['peak_rss_mb']:.0f} MB",
            inflight["peak_rss_mb"],
            at_most=INFLIGHT_PEAK_RSS_MB,
            unit=" MB",
        ),
        _absolute(
            "inflight: succeeded",
            f"{inflight['succeeded']} of {n} ({_statuses(inflight['statuses'])})",
            inflight["succeeded"],
            at_least=n,
        ),
    ]
    if "wall_s" in inflight:
        rows.append(
            Row(
                "inflight: wall time",
                f"{inflight['wall_s']:.1f} s (start-up {inflight['startup_s']:.1f} s, "
                f"last start at {inflight['last_start_s']:.1f} s)",
                f"the upstream's delay {inflight['upstream_delay_s']:g} s",
                _ratio(inflight["wall_s"], inflight["upstream_delay_s"]),
                "(reported)",
                None,
            )
        )
    return rows


def _dispatch_rows(dispatch: dict) -> list[Row]:
    ours = dispatch["executor"]["jobs_per_second"]
    simple = dispatch["simple_worker"]["jobs_per_second"]
    return [
        _relative(
            "dispatch: no-op jobs, one process",
            f"{ours:.0f} jobs/s",
            ours,
            f"SimpleWorker {simple:.0f} jobs/s",
            simple,
            at_least=DISPATCH_SHARE,
        )
    ]


def _intake_rows(intake: dict, store: dict | None) -> list[Row]:
    ours, bare = intake["intake"], intake["bare"]
    replay = store["intake"] if store else {}
    rate, cpu, bare_cpu = (
        ours["accepted_per_second"],
        ours["api_cpu_ms_per_accepted"],
        bare["api_cpu_ms_per_accepted"],
    )
    return [
        _relative(
            f"intake: accepted POSTs, {intake['clients']} clients",
            f"{rate:.0f} req/s",
            rate,
            _replay("intake ceiling", replay.get("requests_per_second"), "req/s"),
            replay.get("requests_per_second"),
            at_least=INTAKE_STORE_SHARE,
        ),
        _relative(
            "intake: p99 latency",
            f"{ours['p99_ms']:.0f} ms (p50 {ours['p50_ms']:.0f}; bare view p99 "
            f"{bare['p99_ms']:.0f})",
            ours["p99_ms"],
            _replay("intake p99", replay.get("p99_ms"), "ms"),
            replay.get("p99_ms"),
            at_most=INTAKE_P99_VS_REPLAY,
        ),
        _absolute(
            "intake: errors",
            f"{ours['errors']} of {ours['requests']}",
            ours["errors"],
            at_most=0,
        ),
        _relative(
            "intake: API CPU per accepted POST",
            f"{cpu:.2f} ms",
            cpu,
            f"bare view {bare_cpu:.2f} ms",
            bare_cpu,
            at_most=INTAKE_CPU_VS_BARE,
        ),
        _baseline_row("intake: API CPU per accepted POST", cpu, INTAKE_BASELINE_CPU_MS),
    ]


def _baseline_row(scenario: str, cpu_ms: float, baseline_ms: float) -> Row:
    sixth = baseline_ms * BASELINE_SHARE
    return _relative(
        scenario,
        f"{cpu_ms:.2f} ms",
        cpu_ms,
        f"a sixth of the baseline: {sixth:.2f} ms ({BASELINE_COMMIT}: {baseline_ms:g} ms)",
        sixth,
        at_most=1.0,
    )


def _replay(what: str, value: float | None, unit: str) -> str:
    """The reference text of a store replay's figure."""
    if value is None:
        return "needs the store scenario"
    return f"store replay: {what} {value:g} {unit}"


def _statuses(statuses: dict) -> str:
    return ", ".join(f"{status} {n}" for status, n in sorted(statuses.items()))


def _cores(summary: dict, name: str) -> str:
    return f"{summary['cores_busy'][name]:.2f} cores"


def _ratio(figure: float, reference: float) -> float | None:
    return round(figure / reference, 2) if reference else None


def table(all_rows: list[Row]) -> str:
    header = ("scenario", "figure", "reference", "ratio", "target", "pass/miss")
    cells = [header] + [
        (
            r.scenario,
            r.figure,
            r.reference,
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

"""`GET /metrics`: one scrape shows every process of the host, plus figures read from the stores.

Multiprocess mode (prometheus_client): with PROMETHEUS_MULTIPROC_DIR set before
prometheus_client is imported, every process (gunicorn workers, executors, recon, one-off
commands) writes its metrics to memory-mapped files in that directory, and this view merges
them: counters and histograms are summed over all processes that ever wrote (so a restart
does not reset them), gauges as their `multiprocess_mode` says. The directory is per host
and must be emptied before the processes start (`make run` and the tests do); a process that
ends takes its live gauges with it (gunicorn's child_exit hook, an atexit hook elsewhere,
and — for a process killed with -9 — `prune_dead()` on each scrape).

Without the variable, /metrics shows this process's own registry (tests in-process, a
single-process deploy).

The store figures (resource slots and budgets from Redis, client credits from SQL) are read
at scrape time, so they are exact across hosts and need no process to keep them current.
"""

import atexit
import glob
import logging
import os
import re
from pathlib import Path

from django.db.models import Sum
from django.http import HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Files of live gauges, named `gauge_<mode>_<pid>.db` by prometheus_client.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def multiproc_dir() -> str:
    return os.environ.get(MULTIPROC_ENV, "")


def prepare_dir(path: str | Path, *, wipe: bool) -> None:
    """Create the directory; `wipe` empties it first (before any process of the host starts:
    files left by a previous run would be summed into the new one's counters)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if wipe:
        for stale in path.glob("*.db"):  # the metric files only
            stale.unlink()


def setup_process() -> None:
    """In every process: make sure the directory exists (prometheus_client fails on the first
    metric otherwise) and drop this process's live gauges when it exits."""
    path = multiproc_dir()
    if not path:
        return
    prepare_dir(path, wipe=False)
    atexit.register(mark_dead, os.getpid())


def mark_dead(pid: int) -> None:
    """Forget a process's live gauges (`svc_inflight` of an executor that stopped)."""
    if multiproc_dir():
        multiprocess.mark_process_dead(pid)


def prune_dead() -> None:
    """Live gauges of processes that no longer exist (killed with -9: no exit hook ran).
    Process ids are this host's: the directory must not be shared across hosts or PID
    namespaces (SVC_METRICS_PRUNE_DEAD=0 turns this off)."""
    pids = set()
    for name in glob.glob(os.path.join(multiproc_dir(), "gauge_live*_*.db")):
        match = _LIVE_GAUGE_FILE.search(name)
        if match:
            pids.add(int(match[1]))
    for pid in pids:
        if not _alive(pid):
            mark_dead(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def metrics_view(request):
    from django.conf import settings

    registry = CollectorRegistry(auto_describe=True)
    if multiproc_dir():
        if settings.SVC_METRICS_PRUNE_DEAD:
            prune_dead()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    registry.register(StoreCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


class _ThisProcess:
    """The default registry as one collector of another registry."""

    def collect(self):
        return REGISTRY.collect()


class StoreCollector:
    """Figures read from Redis and SQL at scrape time; a store that does not answer costs its
    figures for this scrape (and a log line), never the whole page."""

    def collect(self):
        for read in (_resource_families, _credit_families):
            try:
                families = list(read())
            except Exception as exc:
                logger.warning("metrics: %s failed: %s", read.__name__, type(exc).__name__)
                continue
            yield from families


def _resource_families():
    from executor import resources
    from executor.queues import redis_connection

    in_use = GaugeMetricFamily(
        "svc_resource_slots_in_use",
        "Concurrency slots of the resource held now, by every executor of every host",
        labels=["resource"],
    )
    slots = GaugeMetricFamily(
        "svc_resource_slots",
        "max_concurrency of the resource (absent: unlimited)",
        labels=["resource"],
    )
    budget = GaugeMetricFamily(
        "svc_resource_budget",
        "Integration credits the resource may spend per period",
        labels=["resource"],
    )
    used = GaugeMetricFamily(
        "svc_resource_budget_used",
        "Integration credits the resource spent in the current period",
        labels=["resource"],
    )
    remaining = GaugeMetricFamily(
        "svc_resource_budget_remaining_ratio",
        "Share of the resource's budget left in the current period (1: untouched, 0: spent)",
        labels=["resource"],
    )
    connection = redis_connection()
    for name, resource in sorted(resources.load_resource_map().items()):
        snap = resources.snapshot(resource, connection=connection)
        in_use.add_metric([name], snap["inflight"])
        if resource.max_concurrency:
            slots.add_metric([name], resource.max_concurrency)
        if resource.budget:
            spent = snap["budget_used"] or 0
            budget.add_metric([name], resource.budget)
            used.add_metric([name], spent)
            remaining.add_metric([name], max(0.0, 1 - spent / resource.budget))
    return [in_use, slots, budget, used, remaining]


def _credit_families():
    from api.models import Account

    totals = Account.objects.aggregate(balance=Sum("balance"), held=Sum("held"))
    balance = GaugeMetricFamily(
        "svc_credits_balance", "Spendable client credits, all clients together"
    )
    balance.add_metric([], totals["balance"] or 0)
    held = GaugeMetricFamily(
        "svc_credits_held", "Client credits held by requests in flight, all clients together"
    )
    held.add_metric([], totals["held"] or 0)
    return [balance, held]

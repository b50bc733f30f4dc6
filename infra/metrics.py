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
at scrape time, so they are exact across hosts and need no process to keep them current; the
apps that own them register them (`register_scrape`), so this module imports no app.

Access: the figures tell who uses what and how much, so /metrics (and /healthz?detail=1) are
served only to a caller that `metrics_allowed()`: it sends `Authorization: Bearer
<SVC_METRICS_TOKEN>` or connects from SVC_METRICS_TRUSTED_NETWORKS. Anyone else gets 403
(from /healthz, the plain answer without the detail).
"""

import atexit
import glob
import hmac
import ipaddress
import logging
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from django.conf import settings
from django.http import HttpResponse, JsonResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

logger = logging.getLogger(__name__)

# Files of live gauges, named `gauge_<mode>_<pid>.db` by prometheus_client.
_LIVE_GAUGE_FILE = re.compile(r"gauge_live\w+_(\d+)\.db$")


def multiproc_dir() -> str:
    return settings.PROMETHEUS_MULTIPROC_DIR


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
        multiprocess.mark_process_dead(pid, multiproc_dir())


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


def metrics_allowed(request) -> bool:
    """Whether the caller may read the metrics: the right bearer token (compared in constant
    time), or an address in the trusted networks. Nothing configured: nobody may."""
    return caller_allowed(
        request.META.get("HTTP_AUTHORIZATION", ""), request.META.get("REMOTE_ADDR", "")
    )


def caller_allowed(authorization: str, remote_addr: str) -> bool:
    """metrics_allowed for any server (the liveness port's /metrics, infra/probe.py)."""
    token = settings.SVC_METRICS_TOKEN
    scheme, _, given = authorization.partition(" ")
    # Bytes: compare_digest refuses str with non-ASCII characters, which a caller may send.
    sent = given.strip().encode() if scheme.lower() == "bearer" else b""
    if token and sent and hmac.compare_digest(sent, token.encode()):
        return True
    networks = settings.SVC_METRICS_TRUSTED_NETWORKS
    if not networks:
        return False
    try:
        address = ipaddress.ip_address(remote_addr)
    except ValueError:
        return False
    return any(address in network for network in networks)


def forbidden() -> JsonResponse:
    return JsonResponse(
        {
            "error": {
                "code": "forbidden",
                "message": "metrics need `Authorization: Bearer <SVC_METRICS_TOKEN>` or a "
                "caller in SVC_METRICS_TRUSTED_NETWORKS",
            }
        },
        status=403,
    )


def metrics_view(request):
    if not metrics_allowed(request):
        return forbidden()
    registry = _processes_registry()
    registry.register(StoreCollector())
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def _processes_registry() -> CollectorRegistry:
    """This host's processes' metrics (the multiprocess directory), or this process's."""
    registry = CollectorRegistry(auto_describe=True)
    if multiproc_dir():
        if settings.SVC_METRICS_PRUNE_DEAD:
            prune_dead()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_ThisProcess())
    return registry


def processes_exposition() -> tuple[bytes, str]:
    """The text a scrape of this host's processes gets, without the store figures (the API
    serves those): the liveness port's /metrics (an executor's pod, infra/probe.py)."""
    return generate_latest(_processes_registry()), CONTENT_TYPE_LATEST


class _ThisProcess:
    """The default registry as one collector of another registry."""

    def collect(self):
        return REGISTRY.collect()


# Families read from the stores at scrape time, registered by the apps that own the data
# (`register_scrape()` in their AppConfig.ready()), so this module imports no app.
_scrapes: dict[str, Callable[[], Iterable]] = {}


def register_scrape(name: str, read: Callable[[], Iterable]) -> None:
    """Serve the metric families `read()` returns on every scrape of /metrics."""
    _scrapes[name] = read


class StoreCollector:
    """Figures read from Redis and SQL at scrape time; a store that does not answer costs its
    figures for this scrape (and a log line), never the whole page."""

    def collect(self):
        for name, read in list(_scrapes.items()):
            try:
                families = list(read())
            except Exception as exc:
                logger.warning("metrics: %s failed: %s", name, type(exc).__name__)
                continue
            yield from families

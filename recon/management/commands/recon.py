"""`manage.py recon [--once] [--interval S]`: the daemon that makes every request end."""

import logging
import signal
import threading
from collections import Counter

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError
from prometheus_client import start_http_server
from pymongo.errors import PyMongoError
from redis import RedisError

from api import health
from infra import probe
from recon import alerts, gauges, sweeps, usage

logger = logging.getLogger("recon")


class Command(BaseCommand):
    help = "Repair stuck requests, lost jobs and unsettled holds (recon/sweeps.py)."

    def add_arguments(self, parser):
        parser.add_argument("--once", action="store_true", help="one sweep, then exit")
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="serve recon's Prometheus metrics on 127.0.0.1:PORT/metrics "
            "(default SVC_RECON_METRICS_PORT; none when unset)",
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="seconds between sweeps (default SVC_RECON_INTERVAL)",
        )

    def handle(
        self, *args, once: bool, interval: float | None, metrics_port: int | None, **options
    ):
        interval = settings.SVC_RECON_INTERVAL if interval is None else interval
        if interval <= 0:
            raise CommandError(f"--interval must be a positive number of seconds, not {interval}")
        if once:
            try:
                repaired = sweeps.sweep()
            except (RedisError, PyMongoError, DatabaseError) as exc:
                raise CommandError(f"a store did not answer: {type(exc).__name__}") from None
            self.stdout.write(f"repaired: {dict(repaired) or 'nothing'}")
            return
        stop = threading.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            # The current sweep finishes (each repair is one claimed, idempotent step); then exit.
            signal.signal(signum, lambda *_: stop.set())
        metrics_port = metrics_port or settings.SVC_RECON_METRICS_PORT
        if metrics_port:
            try:
                start_http_server(metrics_port, addr=settings.SVC_RECON_METRICS_ADDR)
            except OSError as exc:
                raise CommandError(f"cannot serve metrics on port {metrics_port}: {exc}") from None
            logger.info(
                "recon metrics on http://%s:%d/metrics",
                settings.SVC_RECON_METRICS_ADDR,
                metrics_port,
            )
        beat = None
        if settings.SVC_PROBE_PORT:  # a liveness port (infra/probe.py): a sweep goes round
            beat = probe.serve(
                settings.SVC_PROBE_PORT,
                what="recon",
                addr=settings.SVC_PROBE_ADDR,
                stale_after=max(settings.SVC_PROBE_STALE_SECONDS, 3 * interval),
            )
        logger.info("recon started, a sweep every %gs", interval)
        while not stop.is_set():
            if beat is not None:
                beat.touch()
            repaired = Counter()
            try:
                repaired = sweeps.sweep()
            except Exception:  # a store down: say so, try again next time
                logger.exception("recon sweep failed")
            _watch(repaired)
            _aggregate_usage()
            stop.wait(interval)
        logger.info("recon stopped")


def _watch(repaired: Counter) -> None:
    """Health gauges, then alerts; each step's failure is logged and the loop goes on."""
    try:
        current = health.snapshot()
        gauges.export(current)
    except Exception:
        logger.exception("recon health snapshot failed")
        return
    try:
        alerts.evaluate(current, repaired)
    except Exception:
        logger.exception("recon alerts failed")


def _aggregate_usage() -> None:
    """Hourly usage aggregates (recon/usage.py): idempotent, so every recon may run them."""
    try:
        usage.aggregate_hours()
    except Exception:
        logger.exception("recon usage aggregation failed")

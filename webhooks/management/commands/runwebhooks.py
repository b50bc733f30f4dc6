"""`manage.py runwebhooks [--concurrency N] [--once]`: the webhook worker (webhooks/worker.py)."""

import logging
import signal

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from infra import logs, probe
from webhooks import defaults
from webhooks.worker import WebhookWorker

logger = logging.getLogger("webhooks")


class Command(BaseCommand):
    help = "Deliver webhooks: claim due deliveries, send them signed, retry on the schedule."

    def add_arguments(self, parser):
        parser.add_argument(
            "--concurrency",
            type=int,
            default=defaults.CONCURRENCY,
            help=f"attempts in flight at once (default {defaults.CONCURRENCY})",
        )
        parser.add_argument(
            "--once",
            action="store_true",
            help="send what is due now (and retries that come due meanwhile), then exit",
        )
        parser.add_argument(
            "--shutdown-grace",
            type=float,
            default=defaults.SHUTDOWN_GRACE,
            help="seconds attempts in flight get to finish on SIGTERM "
            f"(default {defaults.SHUTDOWN_GRACE:g}; the rest are retaken after their lease)",
        )

    def handle(self, *args, concurrency: int, once: bool, shutdown_grace: float, **options):
        logs.set_role("webhooks")
        if concurrency < 1:
            raise CommandError(f"--concurrency must be at least 1, not {concurrency}")
        if shutdown_grace < 0:
            raise CommandError(f"--shutdown-grace must not be negative, not {shutdown_grace}")
        worker = WebhookWorker(concurrency=concurrency, once=once, grace=shutdown_grace)
        if settings.SVC_PROBE_PORT and not once:  # a liveness port (infra/probe.py)
            worker.probe_beat = probe.serve(
                settings.SVC_PROBE_PORT,
                what="webhooks",
                addr=settings.SVC_PROBE_ADDR,
                stale_after=settings.SVC_PROBE_STALE_SECONDS,
            )
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop())
        logger.info("webhook worker started, %d attempt(s) at once", concurrency)
        attempts = worker.run()
        logger.info("webhook worker stopped after %d attempt(s)", attempts)
        if once:
            self.stdout.write(f"attempts: {attempts}")

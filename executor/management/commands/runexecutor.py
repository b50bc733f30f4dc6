"""`manage.py runexecutor`: one executor process running many request jobs at once."""

import logging

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from executor import runtime
from executor.queues import all_queue_names, get_queue
from executor.resources import ResourceMapError
from executor.worker import ConcurrentWorker
from infra import probe
from infra.stores import RQ_SERIALIZER, redis_connection


class Command(BaseCommand):
    help = "Run an executor: an RQ worker that executes queued service requests concurrently."

    def add_arguments(self, parser):
        parser.add_argument(
            "--queues",
            nargs="+",
            help="queues to listen on, in priority order (default: every resource's queue, "
            "svc-<resource>, then the default queue)",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=settings.EXECUTOR_CONCURRENCY,
            help="jobs in flight at once (default EXECUTOR_CONCURRENCY, "
            f"{settings.EXECUTOR_CONCURRENCY})",
        )
        parser.add_argument(
            "--shutdown-grace",
            type=float,
            default=settings.EXECUTOR_SHUTDOWN_GRACE,
            help="seconds in-flight jobs get to finish on SIGTERM before they "
            "are handed back to their queues",
        )
        parser.add_argument("--burst", action="store_true", help="exit once the queues are empty")
        parser.add_argument("--name", help="worker name (default: a random id)")

    def handle(self, *args, queues, concurrency, shutdown_grace, burst, name, **options):
        if concurrency < 1:
            raise CommandError(f"--concurrency must be at least 1, not {concurrency}")
        try:
            queue_names = queues or all_queue_names()  # also validates the resource map
        except ResourceMapError as exc:
            raise CommandError(str(exc)) from None
        worker = ConcurrentWorker(
            [get_queue(q) for q in queue_names],
            connection=redis_connection(),
            serializer=RQ_SERIALIZER,
            name=name,
            concurrency=concurrency,
            shutdown_grace=shutdown_grace,
        )
        if settings.SVC_PROBE_PORT:  # a liveness port (infra/probe.py): the loop goes round
            worker.probe_beat = probe.serve(
                settings.SVC_PROBE_PORT,
                what="executor",
                addr=settings.SVC_PROBE_ADDR,
                stale_after=settings.SVC_PROBE_STALE_SECONDS,
                checks=[runtime.loop_problem],
            )
        runtime.warm_up()  # its HTTP clients, before the first job holds a slot
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        worker.work(burst=burst, with_scheduler=True, logging_level=level)

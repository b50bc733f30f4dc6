"""`manage.py runexecutor`: an RQ worker process that runs request jobs."""

from django.conf import settings
from django.core.management.base import BaseCommand
from rq import SimpleWorker

from executor.queues import get_queue, redis_connection


class Command(BaseCommand):
    help = "Run an executor: an RQ worker that executes queued service requests."

    def add_arguments(self, parser):
        parser.add_argument(
            "--queues",
            nargs="+",
            default=[settings.SVC_DEFAULT_QUEUE],
            help="queues to listen on, in priority order",
        )
        parser.add_argument("--burst", action="store_true", help="exit once the queues are empty")
        parser.add_argument("--name", help="worker name (default: host.pid)")

    def handle(self, *args, queues, burst, name, **options):
        worker = SimpleWorker(
            [get_queue(q) for q in queues], connection=redis_connection(), name=name
        )
        worker.work(burst=burst, with_scheduler=False)

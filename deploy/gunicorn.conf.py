"""gunicorn settings for the API (used by `make run` and the container image):
`gunicorn marketplace.asgi:application -c deploy/gunicorn.conf.py`."""

import multiprocessing
import os

from infra import logs

workers = int(os.environ.get("WEB_CONCURRENCY", min(4, multiprocessing.cpu_count() * 2)))
# The API is an ASGI application (marketplace/asgi.py: its sync views in API_THREADS threads
# per worker, the live answers — SSE, WebSocket, Prefer: wait — on each worker's event loop).
worker_class = "marketplace.asgi_worker.Worker"
timeout = 30
graceful_timeout = 20
keepalive = 5
accesslog = "-"
errorlog = "-"
# Workers import the app themselves: the Mongo client must not be shared across a fork.
preload_app = False

# gunicorn's own records (boot, worker exits, access lines) in the same format as the app's
# (LOG_FORMAT, default json); they reach Fluentd through the workers' Django logging only.
logs.set_role("api")
_config = logs.logging_config(
    log_format=os.environ.get("LOG_FORMAT") or "json",
    level=(os.environ.get("LOG_LEVEL") or "INFO").upper(),
)
_config["loggers"] = {
    "gunicorn.error": {"level": "INFO", "handlers": [], "propagate": True},
    "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": True},
}
logconfig_dict = _config


def child_exit(server, worker):
    """A worker ended: its live gauges must not count any more (multiprocess metrics)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)

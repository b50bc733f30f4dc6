"""Recon's gauges from the system's health snapshot (api/health.py)."""

from api.health import Health
from recon.metrics import ERROR_RATE, EXECUTORS_LIVE, QUEUE_DEPTH, QUEUE_OLDEST


def export(health: Health) -> None:
    """Set recon's gauges from a snapshot (queues no longer routed to drop out)."""
    QUEUE_DEPTH.clear()
    QUEUE_OLDEST.clear()
    for name, queue in health.queues.items():
        QUEUE_DEPTH.labels(queue=name).set(queue.depth)
        QUEUE_OLDEST.labels(queue=name).set(queue.oldest_seconds)
    EXECUTORS_LIVE.set(len(health.executors))
    ERROR_RATE.set(health.error_rate)

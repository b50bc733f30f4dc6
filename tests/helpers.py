"""Small helpers shared by tests."""

import os
import subprocess
import sys
from pathlib import Path

from rq import SimpleWorker

from executor.queues import all_queue_names, get_queue
from infra.stores import RQ_SERIALIZER, redis_connection


def run_worker(*queues: str) -> None:
    """Drain the queues with a real RQ worker in this process (burst mode)."""
    names = queues or all_queue_names()
    SimpleWorker(
        [get_queue(q) for q in names], connection=redis_connection(), serializer=RQ_SERIALIZER
    ).work(burst=True, with_scheduler=False)


def error_code(response) -> str:
    body = response.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    return body["error"]["code"]


def run_concurrent_worker(concurrency: int, *queues: str) -> None:
    """Drain the queues with the executor's ConcurrentWorker in this process (burst mode)."""
    from executor.worker import ConcurrentWorker

    names = queues or all_queue_names()
    ConcurrentWorker(
        [get_queue(q) for q in names], connection=redis_connection(), concurrency=concurrency
    ).work(burst=True, with_scheduler=False)


def metrics_headers() -> dict[str, str]:
    """What a scraper sends to read /metrics and /healthz?detail=1 (the test session's token,
    set by marketplace/pytest_plugin.py)."""
    return {"Authorization": f"Bearer {os.environ['SVC_METRICS_TOKEN']}"}


def submit(api, path: str, inputs: dict) -> dict:
    response = api.post(path, inputs, format="json")
    assert response.status_code == 202, response.content
    return response.json()


def queued_job_ids() -> list[str]:
    """Job ids waiting in every request queue."""
    return [job_id for name in all_queue_names() for job_id in get_queue(name).job_ids]


ROOT = Path(__file__).resolve().parent.parent


def manage_command(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """`manage.py …` in a process of its own with `env` (its settings as a deployment's)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def executor_process(*args: str) -> subprocess.Popen:
    """A real `manage.py runexecutor` on the test session's stores, in a session of its own
    (so a test can signal it and its children), its output piped."""
    return subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runexecutor", *args],
        cwd=ROOT,
        env=dict(os.environ),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )

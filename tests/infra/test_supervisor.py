"""`make run`'s supervisor with real child processes: a child killed with -9 is started again
with a line saying so, and one that keeps crashing stops the stack with a one-line reason."""

import os
import signal
import sys

import pytest

from marketplace.supervisor import StackFailed, Supervisor
from tests.live import wait_until

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]
CRASHER = [sys.executable, "-c", "raise SystemExit(3)"]


@pytest.fixture
def supervise(tmp_path):
    started = []

    def make(children: dict, **options) -> tuple[Supervisor, list[str]]:
        lines: list[str] = []
        options = {"backoff_first": 0.05, "backoff_max": 0.2, "stop_grace": 5, **options}
        supervisor = Supervisor(
            children, env=dict(os.environ), cwd=tmp_path, say=lines.append, **options
        )
        supervisor.start()
        started.append(supervisor)
        return supervisor, lines

    yield make
    for supervisor in started:
        supervisor.stop()


def test_a_child_killed_with_9_is_restarted_and_the_others_keep_running(supervise):
    supervisor, lines = supervise({"executor": SLEEPER, "api": SLEEPER})
    first, api = supervisor.pid("executor"), supervisor.pid("api")

    os.kill(first, signal.SIGKILL)

    def restarted():
        supervisor.check()
        pid = supervisor.pid("executor")
        return pid if pid not in (None, first) else None

    wait_until(restarted, timeout=10, what="the executor started again")
    assert lines == ["make run: executor exited (signal 9); restarting it in 0.05s"]
    assert supervisor.pid("api") == api  # the rest of the stack never noticed


def test_the_pause_doubles_while_a_child_keeps_exiting(supervise):
    supervisor, lines = supervise({"recon": CRASHER}, crash_limit=10)

    def exits(n):
        supervisor.check()
        return len(lines) >= n

    wait_until(lambda: exits(4), timeout=10, what="four restarts")
    assert [line.rsplit(" ", 1)[1] for line in lines[:4]] == ["0.05s", "0.1s", "0.2s", "0.2s"]
    assert all(line.startswith("make run: recon exited (status 3)") for line in lines)


def test_five_crashes_within_a_minute_stop_the_stack_with_one_line(supervise):
    supervisor, lines = supervise({"executor": CRASHER, "api": SLEEPER}, window=60)

    with pytest.raises(StackFailed) as stopped:
        supervisor.run(stopping=lambda: False)

    assert str(stopped.value) == (
        "make run: executor exited 5 times within 60s (last: status 3); stopping the stack"
    )
    assert len(lines) == 4  # four restarts were tried before it gave up
    supervisor.stop()
    assert supervisor.pid("api") is None  # stop() ends the others once


def test_stop_ends_every_child_once(supervise):
    supervisor, lines = supervise({"a": SLEEPER, "b": SLEEPER})
    pids = [supervisor.pid("a"), supervisor.pid("b")]
    supervisor.stop()
    assert [supervisor.pid("a"), supervisor.pid("b")] == [None, None]
    assert all(not os.path.exists(f"/proc/{pid}") for pid in pids)
    assert lines == []

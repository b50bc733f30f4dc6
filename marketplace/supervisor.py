"""The `make run` launcher's supervisor: it keeps the stack's processes running.

A child that exits (a crash, a `kill -9`) is started again after a pause that doubles with
each exit in a row (1 s, 2 s, 4 s… up to `backoff_max`), with a line saying so; a child that
ran for `window` seconds before exiting starts the count afresh. `crash_limit` exits within
`window` seconds mean something is wrong for good: the supervisor gives up with a one-line
reason (StackFailed), and the launcher stops everything. Nothing here imports Django.
"""

import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

# Exits of one child within WINDOW seconds after which the stack stops.
CRASH_LIMIT = 5
WINDOW = 60.0
# Seconds before the first restart of a child; doubled per exit in a row, up to the cap.
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0
# Seconds children get to finish their work after SIGTERM before they are killed.
STOP_GRACE = 30.0
# Seconds between two looks at the children.
POLL = 0.2


class StackFailed(RuntimeError):
    """A child kept crashing; the message is the one-line reason the launcher prints."""


@dataclass
class Child:
    name: str
    argv: Sequence[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    exits: deque = field(default_factory=deque)  # monotonic times of recent exits
    in_a_row: int = 0
    restart_at: float | None = None


class Supervisor:
    def __init__(
        self,
        children: dict[str, Sequence[str]],
        *,
        env: dict,
        cwd,
        say: Callable[[str], None] = print,
        crash_limit: int = CRASH_LIMIT,
        window: float = WINDOW,
        backoff_first: float = BACKOFF_FIRST,
        backoff_max: float = BACKOFF_MAX,
        stop_grace: float = STOP_GRACE,
    ):
        self.children = {name: Child(name, argv) for name, argv in children.items()}
        self.env, self.cwd, self.say = env, cwd, say
        self.crash_limit, self.window = crash_limit, window
        self.backoff_first, self.backoff_max = backoff_first, backoff_max
        self.stop_grace = stop_grace

    def start(self) -> None:
        for child in self.children.values():
            self._spawn(child)

    def run(self, stopping: Callable[[], bool]) -> None:
        """Watch the children until `stopping()` says so; StackFailed if one keeps crashing."""
        while not stopping():
            self.check()
            time.sleep(POLL)

    def check(self) -> None:
        """One look: restart the children whose pause is over, note the ones that exited."""
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    self._spawn(child)
                continue
            status = child.process.poll()
            if status is not None:
                self._exited(child, status, now)

    def pid(self, name: str) -> int | None:
        process = self.children[name].process
        return process.pid if process is not None and process.poll() is None else None

    def stop(self) -> None:
        """SIGTERM to every child once, then wait (kill what outlives the grace)."""
        running = [
            c.process for c in self.children.values() if c.process and c.process.poll() is None
        ]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(
            list(child.argv),
            env=self.env,
            cwd=self.cwd,
            start_new_session=True,  # Ctrl-C reaches only the launcher; each child gets one SIGTERM
        )
        child.started_at = time.monotonic()

    def _exited(self, child: Child, status: int, now: float) -> None:
        if now - child.started_at >= self.window:
            child.in_a_row = 0  # it ran long enough: this is a new problem, not the old one
        child.in_a_row += 1
        child.exits.append(now)
        while child.exits and now - child.exits[0] > self.window:
            child.exits.popleft()
        how = f"signal {-status}" if status < 0 else f"status {status}"
        if len(child.exits) >= self.crash_limit:
            raise StackFailed(
                f"make run: {child.name} exited {len(child.exits)} times within "
                f"{self.window:g}s (last: {how}); stopping the stack"
            )
        delay = min(self.backoff_first * 2 ** (child.in_a_row - 1), self.backoff_max)
        self.say(f"make run: {child.name} exited ({how}); restarting it in {delay:g}s")
        child.restart_at = now + delay

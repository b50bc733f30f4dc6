"""The whole system as separate processes (gunicorn API + executor) for black-box tests.

Each stack migrates its own SQL database (a SQLite file or a PostgreSQL database), imports
a small catalog and creates clients through the real commands, then serves HTTP on a free
loopback port. MongoDB and Redis are the test session's.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from infra.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
CATALOG = """
handlers:
  - {id: local.echo, credits: 1}
  - {id: local.fail, credits: 0}
offers:
  - {service: text, action: greet, price: 3, prompt_template: "Hello {name}", handler: local.echo}
  - {service: text, action: slow, price: 2, prompt_template: "{text}", handler: local.echo,
     params: {delay_seconds: 0.3}}
  - {service: text, action: broken, price: 5, prompt_template: "{text}", handler: local.fail}
  - {service: text, action: shout, price: 4, prompt_template: "{previous}!", handler: local.echo}
  - {service: text, action: wait, price: 1, prompt_template: "{text}", handler: local.echo,
     params: {delay_seconds: 600}}
deals:
  - name: starter
    offers:
      - {offer: text/greet, pipeline: null}
      - {offer: text/shout, pipeline: overwrite}
    price_modifier: 10
    addons: [text/slow]
    addons_modifier: 50
  - name: long
    offers:
      - {offer: text/wait, pipeline: null}
      - {offer: text/shout, pipeline: extend}
    price: 3
"""


class LiveStack:
    def __init__(self, database_url: str, workdir: Path):
        self.env = dict(os.environ, DATABASE_URL=database_url, DATA_DIR=str(workdir))
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Multiprocess metrics: every process of the stack writes here, the API serves them all
        # (infra/metrics.py). One directory per stack, empty at the start.
        self.metrics_dir = workdir / f"prometheus-{self.port}"
        self.metrics_dir.mkdir(parents=True, exist_ok=False)
        self.env["PROMETHEUS_MULTIPROC_DIR"] = str(self.metrics_dir)
        self.processes: list[subprocess.Popen] = []

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    def prepare(self) -> None:
        self.manage("migrate", "--noinput")
        catalog = self.workdir / "catalog.yaml"
        catalog.write_text(CATALOG)
        self.manage("catalog", "import", str(catalog))

    def client(self, name: str, credits: int) -> httpx.Client:
        token = (
            self.manage("create_client", name, "--credits", str(credits)).strip().splitlines()[-1]
        )
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )

    def start_api(self, workers: int = 2, threads: int = 8, port: int | None = None) -> str:
        """A gunicorn API on the stack's port (or `port`: a second API server of the same
        stack); returns its base URL once /healthz answers."""
        port = port or self.port
        url = f"http://127.0.0.1:{port}"
        self._spawn(
            [
                str(Path(sys.executable).with_name("gunicorn")),
                "marketplace.asgi:application",
                "-c",
                str(ROOT / "deploy" / "gunicorn.conf.py"),
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                str(workers),
                "--access-logfile",
                "/dev/null",
            ],
            env={**self.env, "API_THREADS": str(threads)},
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the API did not come up")

    def start_executor(self, *args: str) -> subprocess.Popen:
        return self._spawn([sys.executable, str(ROOT / "manage.py"), "runexecutor", *args])

    def start_recon(self, *args: str) -> subprocess.Popen:
        return self._spawn([sys.executable, str(ROOT / "manage.py"), "recon", *args])

    def _spawn(self, argv: list[str], env: dict | None = None) -> subprocess.Popen:
        log = open(self.workdir / f"proc-{len(self.processes)}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(
            argv,
            env=env or self.env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def wait_until(predicate, timeout: float = 60, what: str = "condition", describe=None):
    """predicate()'s first true value, looked at every 0.1 s; AssertionError after `timeout`
    seconds, saying what it waited for (and `describe()`, what it found instead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    found = f"; found {describe()}" if describe else ""
    raise AssertionError(f"timed out waiting for {what}{found}")

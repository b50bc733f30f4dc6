"""The stack a benchmark runs against: embedded servers, a migrated SQLite, a catalog, a client.

It runs as `make run` (marketplace/devstack.py) deploys: the app's settings (benchmarks/
settings.py only adds a bare view's URL), JSON logs at INFO, multiprocess metrics in an
emptied PROMETHEUS_MULTIPROC_DIR, a metrics token, and `manage.py recon` sweeping for the
whole run, so every figure includes what those cost. The one departure is RESOURCE_MAP: the
executor scenarios measure the executor at its own concurrency, which the shipped map's cap
on the `http` resource (64 calls at once) would hide, and the gateway scenario its 40 streams
at once, which the cap on `openai` (16) would queue.

Everything lives in one temporary directory and every child runs in its own session, so
`Stack.close()` (also on Ctrl-C or SIGTERM) stops each one by its process group and removes
the directory. Nothing here imports Django: children get the settings through `env`.
"""

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from infra import embedded

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
# The client the benchmarks submit as, and the offers they call.
CLIENT = "bench"
ECHO_OFFER = ("bench", "echo")  # local.echo, no delay: intake and dispatch
UPSTREAM_OFFER = ("bench", "upstream")  # http.post to the loopback upstream: executor
# openai.chat to the loopback chat upstream (tests/stubs/chat_upstream.py, on the upstream's
# port while the gateway scenario runs), exposed as the model GATEWAY_MODEL: gateway.
GATEWAY_OFFER = ("bench", "chat")
GATEWAY_MODEL = "bench-chat"
# The key the chat upstream takes: the executors' OPENAI_API_KEY (never the caller's own).
GATEWAY_UPSTREAM_KEY = "sk-bench-chat-upstream-0123456789"
# The operator's cap on max_tokens: above the gateway scenario's longest reply.
GATEWAY_MAX_TOKENS = 4096
# Far above anything a benchmark sends, so the intake throttle never refuses (it still runs).
INTAKE_RATE = "100000000/min"
# Credits of the client: every request a run makes costs 1, none may be refused for credits.
CLIENT_CREDITS = 10_000_000
# Seconds a child gets to exit after SIGTERM before it is killed.
STOP_GRACE = 20
# Seconds gunicorn gets to answer /healthz after it starts.
API_START_TIMEOUT = 60

CATALOG = """\
handlers:
  - {{id: local.echo, credits: 1}}
  - {{id: http.post, credits: 1}}
  - {{id: openai.chat, credits: 0}}
offers:
  - {{service: {echo[0]}, action: {echo[1]}, price: 1, prompt_template: "{{n}}",
      handler: local.echo}}
  - {{service: {up[0]}, action: {up[1]}, price: 1, prompt_template: "{{n}}",
      handler: http.post, params: {{url: "{url}", timeout: {timeout}}}}}
  - {{service: {chat[0]}, action: {chat[1]}, price: 1, prompt_template: "{{text}}",
      handler: openai.chat, model_name: {model}, price_per_1k_input: 1, price_per_1k_output: 1,
      params: {{model: bench-upstream, base_url: "{chat_url}", max_tokens: {max_tokens}}}}}
"""
# Seconds an upstream call may take: above the inflight scenario's 30 s answers, with room for
# calls that wait for a connection behind a pool limit to end late rather than be retried.
UPSTREAM_TIMEOUT = 120
# The resources the bench's handlers count against, without limits (the module doc says why).
RESOURCE_MAP = """\
resources:
  http: {max_concurrency: null}
  local: {max_concurrency: null}
  openai: {max_concurrency: null}
"""

ENSURE_INDEXES = "from api.documents import ServiceRequest; ServiceRequest.ensure_indexes()"
# A new, empty request collection with its indexes, and empty request queues: SecantusDB's
# inserts and updates cost more as a collection grows, so each scenario through the API starts
# from the size its store replay reference was measured at, and no executor of a later
# scenario runs the jobs an earlier one left queued (the intake's 3,000).
FRESH_REQUESTS = "; ".join(
    (
        "from api.documents import ServiceRequest",
        "from executor.queues import all_queue_names, get_queue",
        "ServiceRequest.drop_collection()",
        "ServiceRequest.ensure_indexes()",
        "[get_queue(name).empty() for name in all_queue_names()]",
    )
)


class Stack:
    """Servers, environment and children of one benchmark run; use as a context manager."""

    def __init__(self, upstream_port: int):
        self.tmp = Path(tempfile.mkdtemp(prefix="svc-bench-"))
        self.data_dir = self.tmp / "data"
        self.upstream_port = upstream_port
        self.servers: list[embedded.Server] = []
        self.children: list[subprocess.Popen] = []
        self.env: dict[str, str] = {}
        self.token = ""
        self.recon: subprocess.Popen | None = None

    def __enter__(self) -> "Stack":
        signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- start-up ---------------------------------------------------------------------------

    def start(self) -> None:
        mongo = embedded.start_mongo(self.tmp / "mongo", db="svc")
        self.servers.append(mongo)
        redis = embedded.start_redis(self.tmp / "redis")
        self.servers.append(redis)
        (self.data_dir / "static").mkdir(parents=True)
        resource_map = self.tmp / "resource_map.yaml"
        resource_map.write_text(RESOURCE_MAP)
        # Empty before any process starts, as devstack.py leaves it.
        prometheus_dir = self.tmp / "prometheus"
        prometheus_dir.mkdir()
        self.env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="benchmarks.settings",
            MONGO_URI=mongo.uri,
            REDIS_URL=redis.uri,
            DATA_DIR=str(self.data_dir),
            DJANGO_SECRET_KEY=secrets.token_urlsafe(32),
            # Plain HTTP on 127.0.0.1 (production would redirect to HTTPS and want host names).
            SVC_ENVIRONMENT="development",
            SVC_INTAKE_RATE=INTAKE_RATE,
            SVC_RESOURCE_MAP=str(resource_map),
            OPENAI_API_KEY=GATEWAY_UPSTREAM_KEY,
            # What devstack.py sets, stated here so the caller's environment cannot change it.
            LOG_FORMAT="json",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
            PROMETHEUS_MULTIPROC_DIR=str(prometheus_dir),
            SVC_METRICS_TOKEN=secrets.token_urlsafe(32),
            PYTHONPATH=str(ROOT),
        )
        self.manage("migrate", "--noinput")
        # The request collection and its indexes exist before any concurrent load: SecantusDB
        # can spin forever when many connections create one collection at once (first inserts
        # racing mongoengine's first-use createIndexes in every API worker).
        self.manage("shell", "-c", ENSURE_INDEXES)
        catalog = self.tmp / "catalog.yaml"
        url = f"http://127.0.0.1:{self.upstream_port}/v1/answer"
        catalog.write_text(
            CATALOG.format(
                echo=ECHO_OFFER,
                up=UPSTREAM_OFFER,
                url=url,
                timeout=UPSTREAM_TIMEOUT,
                chat=GATEWAY_OFFER,
                model=GATEWAY_MODEL,
                chat_url=f"http://127.0.0.1:{self.upstream_port}/v1",
                max_tokens=GATEWAY_MAX_TOKENS,
            )
        )
        self.manage("catalog", "import", str(catalog))
        created = self.manage("create_client", CLIENT, "--credits", str(CLIENT_CREDITS))
        self.token = created.strip().splitlines()[-1]
        self.recon = self.python("recon", "manage.py", "recon")

    def recon_exited(self) -> str:
        """Why recon is no longer running ("" while it runs): every figure assumes it did."""
        if self.recon is None or self.recon.poll() is None:
            return ""
        return f"recon exited {self.recon.returncode}:\n{self.log_tail('recon')}"

    def fresh_requests(self) -> None:
        self.manage("shell", "-c", FRESH_REQUESTS)

    @property
    def mongo(self) -> embedded.Server:
        return self.servers[0]

    @property
    def redis(self) -> embedded.Server:
        return self.servers[1]

    @property
    def sqlite_path(self) -> Path:
        return self.data_dir / "db.sqlite3"

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    # --- children ---------------------------------------------------------------------------

    def spawn(self, name: str, argv: list[str], **env: str) -> subprocess.Popen:
        """Start a child in its own session, output to <tmp>/<name>.log."""
        log = (self.tmp / f"{name}.log").open("ab")
        child = subprocess.Popen(
            argv,
            env={**self.env, **env},
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.children.append(child)
        return child

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.tmp / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def python(self, name: str, *args: str, **env: str) -> subprocess.Popen:
        return self.spawn(name, [sys.executable, *args], **env)

    def gunicorn(self, port: int, *extra: str, name: str = "gunicorn") -> subprocess.Popen:
        """The API as deployed (deploy/gunicorn.conf.py), with the bench URLs added."""
        return self.spawn(
            name,
            [
                str(VENV_BIN / "gunicorn"),
                "marketplace.asgi:application",
                "-c",
                str(ROOT / "deploy" / "gunicorn.conf.py"),
                "--bind",
                f"127.0.0.1:{port}",
                *extra,
            ],
        )

    def stop(self, child: subprocess.Popen, grace: float = STOP_GRACE) -> int:
        """SIGTERM the child's process group, SIGKILL it after `grace` seconds."""
        if child.poll() is None:
            _signal_group(child, signal.SIGTERM)
            try:
                child.wait(grace)
            except subprocess.TimeoutExpired:
                _signal_group(child, signal.SIGKILL)
                child.wait()
        # Stragglers of the group (RQ's scheduler, gunicorn workers) go too.
        _signal_group(child, signal.SIGKILL)
        return child.returncode

    def close(self) -> None:
        # A second Ctrl-C or SIGTERM must not cut the clean-up short and leave servers behind.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_IGN)
        for child in reversed(self.children):
            self.stop(child)
        self.children.clear()
        for server in reversed(self.servers):
            server.stop()
        self.servers.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def wait_until(predicate, *, timeout: float, what: str, interval: float = 0.05):
    """Poll `predicate` until it returns something true; RuntimeError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.pid, signum)


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt

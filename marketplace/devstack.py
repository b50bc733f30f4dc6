"""`make run`: start what MONGO_URI / REDIS_URL do not name, prepare the database, run everything.

    python -m marketplace.devstack

Starts SecantusDB and redis-server under DATA_DIR when needed, migrates, loads the demo
catalog, creates an admin and a demo client, then runs the API (gunicorn), the executor
and recon in the foreground under a supervisor (marketplace/supervisor.py) that restarts a
child that dies. Ctrl-C or SIGTERM stops every child once, servers last.

Two stacks never share stores by accident: one DATA_DIR runs one stack (a lock file), its
servers listen on the ports of EMBEDDED_MONGO_PORT / EMBEDDED_REDIS_PORT (default 27217 and
6479, or a free port when another program holds the default; dev.env records which), and a
port counts only once this stack's own server is the one listening on it.
"""

import fcntl
import os
import secrets
import signal
import subprocess
import sys
from pathlib import Path

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from infra import embedded, logs
from infra.envs import envint, envoptional
from marketplace.supervisor import StackFailed, Supervisor

ROOT = Path(__file__).resolve().parent.parent
# The embedded servers' ports unless EMBEDDED_MONGO_PORT / EMBEDDED_REDIS_PORT say otherwise;
# dev.env records the ones in use, so `manage.py` in another shell finds them.
MONGO_PORT = 27217
REDIS_PORT = 6479
API_PORT = 8000
ADMIN_USER = "admin"
DEMO_CLIENT = "demo"
DEMO_CREDITS = 1000


class Refused(SystemExit):
    """The stack cannot start; the message is the one line printed."""


def main() -> int:
    try:
        return _run()
    except ImproperlyConfigured as exc:  # a variable with a bad value: one line, no traceback
        raise Refused(logs.redact(f"make run: {exc}")) from None


def _run() -> int:
    logs.register_env_secrets(os.environ)  # what it prints passes logs.redact()
    data_dir = _private_data_dir(Path(envoptional("DATA_DIR") or ROOT / ".data").resolve())
    lock = _lock(data_dir)
    port = envint("PORT", API_PORT)
    if not embedded.port_free(port):
        raise Refused(f"make run: port {port} is in use (another make run?); set PORT to another")
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    servers: list[embedded.Server] = []
    supervisor = None
    try:
        servers = _start_servers(data_dir)
        env = _environment(data_dir, servers)
        env["PORT"] = str(port)
        _prepare(env)
        admin_password = _ensure_admin(env, data_dir)
        token = _ensure_demo_client(env, data_dir)
        supervisor = Supervisor(_children(env), env=env, cwd=ROOT, say=_say)
        supervisor.start()
        _banner(env, admin_password, token)
        supervisor.run(lambda: stopping)
        return 0
    except StackFailed as exc:
        _say(str(exc))
        return 1
    finally:
        if supervisor is not None:
            supervisor.stop()
        for server in reversed(servers):
            server.stop()
        lock.close()


def _say(line: str) -> None:
    print(logs.redact(line), flush=True)  # a store URI's password never reaches the terminal


def _private_data_dir(data_dir: Path) -> Path:
    """DATA_DIR and all the stack writes there (the SQLite file, the servers' data, secrets,
    dev.env) for this user only: umask 077 for this process and its children, and a directory
    an earlier version made 0755 closed to the others now."""
    os.umask(0o077)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    return data_dir


def _lock(data_dir: Path):
    """Hold DATA_DIR's lock for the stack's lifetime: one stack per data directory."""
    handle = open(data_dir / "devstack.lock", "a+")  # noqa: SIM115 (held until main returns)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        raise Refused(
            f"make run: another make run (pid {holder}) uses DATA_DIR={data_dir}; stop it, "
            "or set DATA_DIR to another directory"
        ) from None
    handle.truncate(0)
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _start_servers(data_dir: Path) -> list[embedded.Server]:
    servers = []
    try:
        if not envoptional("MONGO_URI"):
            servers.append(_own_server(data_dir, "mongo", "EMBEDDED_MONGO_PORT", MONGO_PORT))
        if not envoptional("REDIS_URL") and not envoptional("REDIS_SENTINELS"):
            servers.append(_own_server(data_dir, "redis", "EMBEDDED_REDIS_PORT", REDIS_PORT))
    except BaseException:
        for server in reversed(servers):
            server.stop()
        raise
    return servers


def _own_server(data_dir: Path, kind: str, variable: str, default: int) -> embedded.Server:
    """This DATA_DIR's server of `kind` on its port: the one the variable names (refused when
    another program holds it), else the default, else a free one."""
    storage, pid_file = data_dir / kind, data_dir / f"{kind}.pid"
    if embedded.stop_orphan(pid_file, str(storage)):  # left by a make run that was killed
        _say(f"make run: stopped the {kind} server a previous run of this DATA_DIR left")
    asked = envoptional(variable)
    port = envint(variable, default)
    if not embedded.port_free(port):
        if asked:
            raise Refused(
                f"make run: port {port} ({variable}) is held by another program; "
                f"free it or set {variable} to another port"
            )
        port = embedded.free_port()
        _say(f"make run: port {default} is taken (another stack?); this {kind} uses {port}")
    start = embedded.start_mongo if kind == "mongo" else embedded.start_redis
    try:
        server = start(storage, port=port)
    except embedded.PortTaken as exc:
        raise Refused(f"make run: {exc}; set {variable} to a free port") from None
    pid_file.write_text(f"{server.process.pid} {port}\n")
    return server


def _environment(data_dir: Path, servers: list[embedded.Server]) -> dict:
    env = dict(os.environ, DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    # A developer's machine: local hosts over plain HTTP, DEBUG allowed (marketplace/settings).
    env.setdefault("SVC_ENVIRONMENT", "development")
    by_name = {s.name: s for s in servers}
    if "SecantusDB" in by_name:
        env["MONGO_URI"] = by_name["SecantusDB"].uri
    if "redis" in by_name:
        env["REDIS_URL"] = by_name["redis"].uri
    env.setdefault("DJANGO_SECRET_KEY", _persistent_secret(data_dir / "secret_key"))
    # A developer's stack issues `svc_test_…` keys: they never work on a live deployment.
    env.setdefault("SVC_API_KEY_ENVIRONMENT", "test")
    # Webhooks to a receiver on this machine (http://127.0.0.1:…) are taken (webhooks/).
    env.setdefault("SVC_WEBHOOK_ALLOW_PRIVATE", "1")
    # The key `~` config values are encrypted with (configs/keys.py); kept like the secret key.
    env.setdefault("CONFIG_FERNET_KEY", _persistent_secret(data_dir / "fernet_key", fernet=True))
    # The bearer token /metrics and /healthz?detail=1 want (infra/metrics.py); kept likewise.
    env.setdefault("SVC_METRICS_TOKEN", _persistent_secret(data_dir / "metrics_token", 32))
    logs.register_env_secrets(env)
    # Every process writes its metrics here and the API's /metrics shows them all
    # (infra/metrics.py); emptied now, before any process of this run starts.
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(data_dir / "prometheus"))
    prometheus_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    prometheus_dir.mkdir(parents=True, exist_ok=True)
    for stale in prometheus_dir.glob("*.db"):  # the metric files only: it may be a shared dir
        stale.unlink()
    # Written so that `manage.py …` in another shell reaches the same servers (see settings).
    keys = ("MONGO_URI", "REDIS_URL", "DJANGO_SECRET_KEY", "CONFIG_FERNET_KEY")
    keys += ("PROMETHEUS_MULTIPROC_DIR", "SVC_API_KEY_ENVIRONMENT")
    keys += ("SVC_ENVIRONMENT", "SVC_METRICS_TOKEN", "SVC_WEBHOOK_ALLOW_PRIVATE")
    (data_dir / "dev.env").write_text("".join(f"{k}={env[k]}\n" for k in keys))
    os.chmod(data_dir / "dev.env", 0o600)
    return env


def _persistent_secret(path: Path, nbytes: int = 50, fernet: bool = False) -> str:
    if not path.exists():
        path.write_text(Fernet.generate_key().decode() if fernet else secrets.token_urlsafe(nbytes))
        os.chmod(path, 0o600)
    return path.read_text().strip()


def _manage(env: dict, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), *args], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(
            logs.redact(f"manage.py {' '.join(args)} failed:\n{result.stderr.strip()}")
        )
    return result.stdout


def _prepare(env: dict) -> None:
    _manage(env, "migrate", "--noinput")
    _manage(env, "collectstatic", "--noinput")
    # The demo catalog is loaded once: later runs keep what the operator changed in the admin.
    marker = Path(env["DATA_DIR"]) / "demo_catalog_loaded"
    if not marker.exists():
        _manage(env, "catalog", "import", str(ROOT / "api" / "demo_catalog.yaml"))
        marker.touch()


# Run by `manage.py shell -c`: creates or resets the admin with the password from the env.
ENSURE_ADMIN = """
import os
from django.contrib.auth import get_user_model
user, _ = get_user_model().objects.get_or_create(username=os.environ["DEVSTACK_ADMIN_USER"])
user.is_staff = user.is_superuser = True
user.set_password(os.environ["DEVSTACK_ADMIN_PASSWORD"])
user.save()
"""


def _ensure_admin(env: dict, data_dir: Path) -> str:
    password = _persistent_secret(data_dir / "admin_password", nbytes=12)
    admin_env = dict(env, DEVSTACK_ADMIN_USER=ADMIN_USER, DEVSTACK_ADMIN_PASSWORD=password)
    _manage(admin_env, "shell", "-c", ENSURE_ADMIN)
    return password


def _ensure_demo_client(env: dict, data_dir: Path) -> str:
    """The demo client's key. Keys are shown once and stored hashed, so the first run keeps
    the one create_client printed in DATA_DIR/demo_key (0600); later runs print it again (a
    revoked one is replaced: delete the file)."""
    saved, granted = data_dir / "demo_key", data_dir / "demo_client_created"
    if saved.exists():
        return saved.read_text().strip()
    credits = "0" if granted.exists() else str(DEMO_CREDITS)  # granted once, on the first run
    key = _manage(env, "create_client", DEMO_CLIENT, "--credits", credits).strip().splitlines()[-1]
    saved.write_text(key + "\n")
    os.chmod(saved, 0o600)
    granted.touch()
    return key


def _children(env: dict) -> dict[str, list[str]]:
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    config = str(ROOT / "deploy" / "gunicorn.conf.py")
    manage = [sys.executable, str(ROOT / "manage.py")]
    return {
        "api": [
            gunicorn,
            "marketplace.asgi:application",
            "-c",
            config,
            "--bind",
            f"127.0.0.1:{env['PORT']}",
        ],
        "executor": [*manage, "runexecutor"],
        "recon": [*manage, "recon"],
        "webhooks": [*manage, "runwebhooks"],
    }


def _banner(env: dict, admin_password: str, token: str) -> None:
    port = env["PORT"]
    base = f"http://127.0.0.1:{port}"
    print(
        f"""
  API       {base}/svc/   (health: {base}/healthz; OpenAPI: {base}/api/docs/)
  Metrics   {base}/metrics   header: Authorization: Bearer {env["SVC_METRICS_TOKEN"]}
  Admin     {base}/admin/   user: {ADMIN_USER}   password: {admin_password}
  API key   {token}   (client '{DEMO_CLIENT}'; more: manage.py key create {DEMO_CLIENT})

  Try it:
    curl -s -X POST {base}/svc/text/greet/ -H 'Authorization: Bearer {token}' \\
         -H 'Content-Type: application/json' -d '{{"name": "Ada"}}'
    curl -s {base}/svc/request/<id>/ -H 'Authorization: Bearer {token}'
    curl -sN {base}/svc/request/<id>/events/ -H 'Authorization: Bearer {token}'   # live (SSE)
    curl -s -X POST {base}/svc/text/greet/ -H 'Authorization: Bearer {token}' \
         -H 'Prefer: wait=10' -d '{{"name": "Grace"}}'   # the answer once it is done
    curl -s -X POST {base}/svc/deal/starter/ -H 'Authorization: Bearer {token}' \\
         -d '{{"inputs": {{"name": "Ada", "text": "hi"}}, "addons": ["text/shout"]}}'

  Chat: chat/complete, and the gateway's model demo-chat (any OpenAI SDK, streamed or not):
    {_upstream_status(env)}
    {_sdk_example(base, token)}

  A child that dies is restarted; Ctrl-C stops everything.
""",
        flush=True,
    )


def _sdk_example(base: str, token: str) -> str:
    """The openai SDK's call of the demo model, as one line a shell runs."""
    return (
        f"python -c 'from openai import OpenAI; "
        f'c = OpenAI(base_url="{base}/v1", api_key="{token}"); '
        'print(c.chat.completions.create(model="demo-chat", '
        'messages=[{"role": "user", "content": "Hi"}]).choices[0].message.content)\''
    )


def _upstream_status(env: dict) -> str:
    """Whether the chat offers can reach a model, and how to make them (the banner's line)."""
    base_url, key = env.get("OPENAI_BASE_URL"), env.get("OPENAI_API_KEY")
    if base_url:
        return (
            f"upstream: OPENAI_BASE_URL={base_url} (the offers' params.model must be one it "
            "serves: edit it in the admin)"
        )
    if key:
        return "upstream: OpenAI (OPENAI_API_KEY is set)"
    return (
        "not configured: they fail with missing_credentials. Set OPENAI_API_KEY=sk-... for "
        "OpenAI, or OPENAI_BASE_URL=http://127.0.0.1:11434/v1 for any OpenAI-compatible server "
        "(a local Ollama, vLLM), and run make run again"
    )


if __name__ == "__main__":
    sys.exit(main())

"""`make run`: start what MONGO_URI / REDIS_URL do not name, prepare the database, run everything.

    python -m marketplace.devstack

Starts SecantusDB and redis-server under DATA_DIR when needed, migrates, loads the demo
catalog, creates an admin and a demo client, then runs the API (gunicorn), the executor
and recon in the foreground. Ctrl-C or SIGTERM stops every child, servers last.
"""

import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from cryptography.fernet import Fernet

from marketplace import embedded

ROOT = Path(__file__).resolve().parent.parent
# Fixed ports for the embedded servers so `manage.py` in another shell finds them again.
MONGO_PORT = int(os.environ.get("EMBEDDED_MONGO_PORT", "27217"))
REDIS_PORT = int(os.environ.get("EMBEDDED_REDIS_PORT", "6479"))
# Seconds children get to finish in-flight work after SIGTERM before they are killed.
STOP_GRACE = 30
ADMIN_USER = "admin"
DEMO_CLIENT = "demo"
DEMO_CREDITS = 1000


def main() -> int:
    data_dir = Path(os.environ.get("DATA_DIR", ROOT / ".data")).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    servers = _start_servers(data_dir)
    children: list[subprocess.Popen] = []
    stopping = False

    def stop(signum, frame):
        nonlocal stopping
        stopping = True

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop)
    try:
        env = _environment(data_dir, servers)
        _prepare(env)
        admin_password = _ensure_admin(env, data_dir)
        token = _ensure_demo_client(env, data_dir)
        children = _start_children(env)
        _banner(env, admin_password, token)
        while not stopping and all(child.poll() is None for child in children):
            time.sleep(0.5)
        failed = [child for child in children if child.poll() not in (None, 0)]
        return 1 if failed and not stopping else 0
    finally:
        _stop(children)
        for server in reversed(servers):
            server.stop()


def _start_servers(data_dir: Path) -> list[embedded.Server]:
    servers = []
    if not os.environ.get("MONGO_URI"):
        servers.append(embedded.start_mongo(data_dir / "mongo", port=MONGO_PORT))
    if not os.environ.get("REDIS_URL"):
        servers.append(embedded.start_redis(data_dir / "redis", port=REDIS_PORT))
    return servers


def _environment(data_dir: Path, servers: list[embedded.Server]) -> dict:
    env = dict(os.environ, DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    by_name = {s.name: s for s in servers}
    if "SecantusDB" in by_name:
        env["MONGO_URI"] = by_name["SecantusDB"].uri
    if "redis" in by_name:
        env["REDIS_URL"] = by_name["redis"].uri
    env.setdefault("DJANGO_SECRET_KEY", _persistent_secret(data_dir / "secret_key"))
    # The key `~` config values are encrypted with (configs/keys.py); kept like the secret key.
    env.setdefault("CONFIG_FERNET_KEY", _persistent_secret(data_dir / "fernet_key", fernet=True))
    # Every process writes its metrics here and the API's /metrics shows them all
    # (marketplace/prometheus.py); emptied now, before any process of this run starts.
    env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(data_dir / "prometheus"))
    prometheus_dir = Path(env["PROMETHEUS_MULTIPROC_DIR"])
    prometheus_dir.mkdir(parents=True, exist_ok=True)
    for stale in prometheus_dir.glob("*.db"):  # the metric files only: it may be a shared dir
        stale.unlink()
    # Written so that `manage.py …` in another shell reaches the same servers (see settings).
    keys = ("MONGO_URI", "REDIS_URL", "DJANGO_SECRET_KEY", "CONFIG_FERNET_KEY")
    keys += ("PROMETHEUS_MULTIPROC_DIR",)
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
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr.strip()}")
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
    # Credits are granted once, on the first run; later runs only print the token again.
    marker = data_dir / "demo_client_created"
    credits = "0" if marker.exists() else str(DEMO_CREDITS)
    token = (
        _manage(env, "create_client", DEMO_CLIENT, "--credits", credits).strip().splitlines()[-1]
    )
    marker.touch()
    return token


def _start_children(env: dict) -> list[subprocess.Popen]:
    port = env.get("PORT", "8000")
    venv_bin = Path(sys.executable).parent
    api = subprocess.Popen(
        [
            str(venv_bin / "gunicorn"),
            "marketplace.wsgi:application",
            "-c",
            str(ROOT / "deploy" / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{port}",
        ],
        env=env,
        cwd=ROOT,
        start_new_session=True,  # Ctrl-C reaches only us; each child then gets one SIGTERM
    )
    executor = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "runexecutor"],
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    recon = subprocess.Popen(
        [sys.executable, str(ROOT / "manage.py"), "recon"],
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    return [api, executor, recon]


def _stop(children: list[subprocess.Popen]) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    for child in children:
        try:
            child.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def _banner(env: dict, admin_password: str, token: str) -> None:
    port = env.get("PORT", "8000")
    base = f"http://127.0.0.1:{port}"
    print(
        f"""
  API       {base}/svc/   (health: {base}/healthz, metrics: {base}/metrics)
  Admin     {base}/admin/   user: {ADMIN_USER}   password: {admin_password}
  Token     {token}   (client '{DEMO_CLIENT}')

  Try it:
    curl -s -X POST {base}/svc/text/greet/ -H 'Authorization: Token {token}' \\
         -H 'Content-Type: application/json' -d '{{"name": "Ada"}}'
    curl -s {base}/svc/request/<id>/ -H 'Authorization: Token {token}'
    curl -s -X POST {base}/svc/deal/starter/ -H 'Authorization: Token {token}' \\
         -d '{{"inputs": {{"name": "Ada", "text": "hi"}}, "addons": ["text/shout"]}}'

  Ctrl-C stops everything.
""",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())

"""`make run` as a user runs it (python -m marketplace.devstack): two stacks on two DATA_DIRs
get stores of their own, a port or a DATA_DIR that is taken is refused in one line, and a
child killed with -9 is restarted while the rest of the stack keeps serving."""

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import openai
import pytest

from infra.embedded import free_port, listening_pids
from tests.live import wait_until

ROOT = Path(__file__).resolve().parents[2]
# What the test session sets for itself and a user's `make run` would not have.
SESSION_ONLY = ("MONGO_URI", "REDIS_URL", "SVC_TEST_DB_IS_MAIN", "PROMETHEUS_MULTIPROC_DIR")
SESSION_ONLY += ("SVC_ENVIRONMENT", "SVC_METRICS_TOKEN")


class Devstack:
    def __init__(self, data_dir: Path, **env):
        self.data_dir = data_dir
        self.port = int(env.pop("PORT", free_port()))
        base = {k: v for k, v in os.environ.items() if k not in SESSION_ONLY}
        self.env = {**base, "DATA_DIR": str(data_dir), "PORT": str(self.port), **env}
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "marketplace.devstack"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def wait_ready(self) -> None:
        wait_until(
            lambda: self.said("A child that dies is restarted") or self.process.poll() is not None,
            timeout=180,
            what="make run's banner",
        )
        assert self.process.poll() is None, "\n".join(self.lines[-40:])
        wait_until(self.healthy, timeout=60, what="the API's /healthz")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def dev_env(self) -> dict[str, str]:
        text = (self.data_dir / "dev.env").read_text()
        return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)

    def child_pids(self, marker: str) -> list[int]:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except (OSError, ValueError, IndexError):
                continue
            if parent == self.process.pid and marker in cmdline:
                found.append(int(stat.parent.name))
        return found

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)  # Ctrl-C
            try:
                self.process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def port_of(uri: str) -> int:
    return int(uri.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def first_stack(tmp_path_factory):
    stack = Devstack(tmp_path_factory.mktemp("stack-a"))
    try:
        stack.wait_ready()
        yield stack
    finally:
        stack.stop()


def test_a_second_make_run_on_another_data_dir_gets_stores_of_its_own(first_stack, tmp_path):
    second = Devstack(tmp_path / "b")
    try:
        second.wait_ready()
        a, b = first_stack.dev_env(), second.dev_env()
        for name in ("MONGO_URI", "REDIS_URL"):
            assert port_of(a[name]) != port_of(b[name]), (a[name], b[name])
        # Each store is served by the server its own stack started.
        for stack, env in ((first_stack, a), (second, b)):
            for name in ("MONGO_URI", "REDIS_URL"):
                owners = listening_pids(port_of(env[name]))
                assert owners and all(stack.process.pid == parent_of(pid) for pid in owners)
        assert first_stack.healthy() and second.healthy()
    finally:
        assert second.stop() == 0, "\n".join(second.lines[-20:])


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_taken_store_port_or_data_dir_is_refused_in_one_line(first_stack, tmp_path):
    mongo_port = port_of(first_stack.dev_env()["MONGO_URI"])
    asked = Devstack(tmp_path / "c", EMBEDDED_MONGO_PORT=str(mongo_port))
    assert asked.process.wait(60) != 0
    assert asked.lines[-1] == (
        f"make run: port {mongo_port} (EMBEDDED_MONGO_PORT) is held by another program; "
        "free it or set EMBEDDED_MONGO_PORT to another port"
    ), asked.lines

    same_dir = Devstack(first_stack.data_dir)
    assert same_dir.process.wait(60) != 0
    assert same_dir.lines[-1] == (
        f"make run: another make run (pid {first_stack.process.pid}) uses "
        f"DATA_DIR={first_stack.data_dir}; stop it, or set DATA_DIR to another directory"
    ), same_dir.lines
    assert first_stack.healthy()


def test_a_killed_executor_is_restarted_and_the_api_keeps_serving(first_stack):
    [executor] = first_stack.child_pids("runexecutor")
    [api] = first_stack.child_pids("gunicorn")

    os.kill(executor, signal.SIGKILL)

    wait_until(
        lambda: first_stack.said("make run: executor exited (signal 9); restarting it in 1s"),
        timeout=30,
        what="the supervisor's line",
    )
    restarted = wait_until(
        lambda: [p for p in first_stack.child_pids("runexecutor") if p != executor],
        timeout=30,
        what="a new executor",
    )
    assert len(restarted) == 1
    assert first_stack.child_pids("gunicorn") == [api] and first_stack.healthy()


def test_the_data_dir_and_all_in_it_are_the_user_s_only(first_stack):
    """umask 077 for the stack and its children: the SQLite file, the servers' data, the
    secrets and dev.env are 0600 (directories 0700), whoever created them."""
    data_dir = first_stack.data_dir
    assert data_dir.stat().st_mode & 0o777 == 0o700
    assert (data_dir / "db.sqlite3").stat().st_mode & 0o777 == 0o600
    # collectstatic sets 0644 (FILE_UPLOAD_PERMISSIONS) on what it copies: public assets,
    # which whitenoise serves to anyone anyway, behind the directory's 0700.
    public = data_dir / "static"
    exposed = [
        f"{path.relative_to(data_dir)} {path.stat().st_mode & 0o777:o}"
        for path in data_dir.rglob("*")
        if not path.is_symlink() and path.stat().st_mode & 0o077 and public not in path.parents
    ]
    assert exposed == []


def test_metrics_want_the_token_make_run_printed(first_stack):
    env = first_stack.dev_env()
    token = env["SVC_METRICS_TOKEN"]
    assert env["SVC_ENVIRONMENT"] == "development"  # so manage.py in another shell runs too
    url = f"http://127.0.0.1:{first_stack.port}/metrics"
    assert first_stack.said(f"Metrics   {url}   header: Authorization: Bearer {token}")
    assert httpx.get(url, timeout=10).status_code == 403
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(url, headers=headers, timeout=10).status_code == 200


def test_the_banner_says_how_to_make_chat_work(first_stack):
    base = f"http://127.0.0.1:{first_stack.port}"
    assert first_stack.said(f'OpenAI(base_url="{base}/v1"')
    if not (os.environ.get("OPENAI_API_KEY") or os.environ.get("OPENAI_BASE_URL")):
        assert first_stack.said("not configured: they fail with missing_credentials")
        assert first_stack.said("OPENAI_BASE_URL=http://127.0.0.1:11434/v1")


def test_with_an_openai_compatible_server_the_demo_chat_works_over_svc_and_v1(
    tmp_path, chat_upstream
):
    chat_upstream.api_key = ""  # like a local Ollama: no key wanted, none set
    stack = Devstack(tmp_path / "chat", OPENAI_BASE_URL=chat_upstream.url, OPENAI_API_KEY="")
    try:
        stack.wait_ready()
        assert stack.said(f"upstream: OPENAI_BASE_URL={chat_upstream.url}")
        base = f"http://127.0.0.1:{stack.port}"
        key = (stack.data_dir / "demo_key").read_text().strip()
        answer = httpx.post(
            f"{base}/svc/chat/complete/",
            json={"prompt": "Hi"},
            headers={"Authorization": f"Bearer {key}", "Prefer": "wait=30"},
            timeout=40,
        ).json()
        assert (answer["status"], answer["results"]) == ("succeeded", ["echo: Hi"]), answer["error"]
        client = openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
        assert "demo-chat" in [m.id for m in client.models.list()]
        stream = client.chat.completions.create(
            model="demo-chat", messages=[{"role": "user", "content": "Hello"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
            "echo: Hello"
        )
        sent = chat_upstream.requests[-1]
        assert "authorization" not in sent["headers"]  # a server of one's own: no key set
    finally:
        assert stack.stop() == 0, "\n".join(stack.lines[-20:])

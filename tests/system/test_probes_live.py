"""The liveness ports of the processes as deployed (infra/probe.py; deploy/k8s and
deploy/compose.yaml call them): an executor whose every slot is busy on a long call is alive,
and so are recon and the webhook worker; the API's liveness and readiness apart."""

import sys

import httpx
import pytest

from infra.embedded import free_port
from tests.live import ROOT, wait_until

pytestmark = pytest.mark.system


def probe_env(live, port: int) -> dict:
    return {**live.env, "SVC_PROBE_PORT": str(port), "SVC_PROBE_ADDR": "127.0.0.1"}


def answer(port: int):
    try:
        return httpx.get(f"http://127.0.0.1:{port}/livez", timeout=5)
    except httpx.HTTPError:
        return None


def test_a_busy_executor_recon_and_the_webhook_worker_are_alive(stack):
    live = stack()
    live.start_api(workers=1, threads=4)
    alice = live.client("alice", credits=20)
    manage = [sys.executable, str(ROOT / "manage.py")]
    ports = {role: free_port() for role in ("executor", "recon", "webhooks")}
    live._spawn(
        [*manage, "runexecutor", "--concurrency", "1"], env=probe_env(live, ports["executor"])
    )
    live._spawn([*manage, "recon", "--interval", "1"], env=probe_env(live, ports["recon"]))
    live._spawn([*manage, "runwebhooks"], env=probe_env(live, ports["webhooks"]))
    busy = alice.post("/svc/text/wait/", json={"text": "a long call"}).json()  # 600 s
    wait_until(
        lambda: alice.get(f"/svc/request/{busy['id']}/").json()["status"] == "running",
        what="the long call to run",
    )
    for role, port in ports.items():
        found = wait_until(lambda port=port: answer(port), what=f"{role}'s liveness port")
        assert found.status_code == 200, (role, found.text)
        assert found.json()["status"] == "ok" and found.json()["process"] == role
    assert httpx.get(f"{live.url}/livez").json() == {"status": "ok"}
    assert httpx.get(f"{live.url}/readyz").json()["status"] == "ok"
    alice.post(busy["urls"]["cancel"])  # so that the executor stops at once

"""Stores that want credentials: a MongoDB with a SCRAM user and a Redis with an ACL user (no
default user), named in MONGO_URI / REDIS_URL. The whole system runs on them (API, executor,
the config command), and the passwords never show: not in any process's log, not in
/healthz, not in a command's error when a password is wrong or a server does not answer."""

import json
import os
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from pymongo import MongoClient

from infra import embedded
from tests.helpers import manage_command, metrics_headers
from tests.live import LiveStack, wait_until

ROOT = Path(__file__).resolve().parents[2]
# With characters a URI must percent-encode: what reaches the drivers is decoded.
MONGO_PASSWORD = "m0ngo@pass:w/rd"
REDIS_PASSWORD = "r3dis@pass:w/rd"
# Everything a password may show as: as given, and as written in a URI.
SECRETS = (MONGO_PASSWORD, REDIS_PASSWORD, quote(MONGO_PASSWORD, safe=""))
SECRETS += (quote(REDIS_PASSWORD, safe=""),)


def mongo_uri(port: int, password: str) -> str:
    return (
        f"mongodb://svc:{quote(password, safe='')}@127.0.0.1:{port}/svc_guarded"
        "?authSource=admin&directConnection=true"
    )


def redis_url(port: int, password: str) -> str:
    return f"redis://svc:{quote(password, safe='')}@127.0.0.1:{port}/0"


def port_of(uri: str) -> int:
    return int(uri.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> dict[str, int]:
    """The ports of a MongoDB and a Redis that refuse anyone without the password."""
    tmp = tmp_path_factory.mktemp("guarded")
    mongo_port = embedded.free_port()
    # SecantusDB: users are created in a run without auth, then it restarts with it.
    provisioning = embedded.start_mongo(tmp / "mongo", port=mongo_port)
    try:
        with MongoClient(provisioning.uri) as client:
            client.admin.command(
                "createUser", "svc", pwd=MONGO_PASSWORD, roles=[{"role": "root", "db": "admin"}]
            )
    finally:
        provisioning.stop()
    mongo = embedded.start_mongo(tmp / "mongo", port=mongo_port, auth=True)
    acl = ("--user", "default", "off", "--user", "svc", "on", f">{REDIS_PASSWORD}")
    redis = embedded.start_redis(tmp / "redis", args=(*acl, "~*", "&*", "+@all"))
    try:
        yield {"mongo": mongo_port, "redis": port_of(redis.uri)}
    finally:
        redis.stop()
        mongo.stop()


def stores_env(guarded, mongo_password=MONGO_PASSWORD, redis_password=REDIS_PASSWORD) -> dict:
    return {
        "MONGO_URI": mongo_uri(guarded["mongo"], mongo_password),
        "REDIS_URL": redis_url(guarded["redis"], redis_password),
    }


def leaks(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_the_system_runs_on_stores_that_want_passwords(guarded, tmp_path):
    live = LiveStack(f"sqlite:///{tmp_path / 'live.sqlite3'}", tmp_path)
    live.env.update(stores_env(guarded))
    try:
        live.prepare()
        live.start_api(workers=1, threads=4)
        live.start_executor("--concurrency", "2")
        alice = live.client("alice", credits=100)
        response = alice.post("/svc/text/greet/", json={"name": "Ada"})
        assert response.status_code == 202, response.text
        url = response.json()["url"]
        done = wait_until(
            lambda: alice.get(url).json()["status"] in ("succeeded", "failed"),
            timeout=60,
            what="the request to end",
        )
        assert done and alice.get(url).json()["status"] == "succeeded"
        health = httpx.get(f"{live.url}/healthz?detail=1", headers=metrics_headers()).json()
        assert health["status"] == "ok" and health["detail"]["executors_live"] == 1, health
        assert "no configs stored yet" in live.manage("config", "list")
    finally:
        live.stop()
    logs = "".join(path.read_text(errors="replace") for path in tmp_path.glob("proc-*.log"))
    assert "request accepted" in logs  # the API's records are there, its secrets are not
    assert leaks(logs) == []


def test_a_wrong_password_or_a_silent_server_is_reported_without_it(guarded, tmp_path):
    base = dict(os.environ, DATA_DIR=str(tmp_path), LOG_LEVEL="WARNING")
    wrong = dict(base, **stores_env(guarded, "not-" + MONGO_PASSWORD, "not-" + REDIS_PASSWORD))
    wrong_secrets = [
        quote("not-" + MONGO_PASSWORD, safe=""),
        quote("not-" + REDIS_PASSWORD, safe=""),
    ]

    refused = manage_command(wrong, "config", "list")
    assert refused.returncode != 0
    assert "authentication failed" in refused.stderr.lower(), refused.stderr
    silent = manage_command(
        dict(base, MONGO_URI=mongo_uri(embedded.free_port(), MONGO_PASSWORD)), "config", "list"
    )
    assert silent.returncode != 0
    [line] = silent.stderr.strip().splitlines()
    assert "MongoDB at mongodb://svc:[redacted]@127.0.0.1:" in line, line
    assert "did not answer" in line

    probe = "import json; from django.test import Client; r = Client().get('/healthz'); "
    probe += "print(json.dumps([r.status_code, r.json()]))"
    health = manage_command(wrong, "shell", "-c", probe)
    status, body = json.loads(health.stdout.strip().splitlines()[-1])
    assert status == 503 and body["checks"]["redis"].startswith("error"), body
    for output in (refused, silent, health):
        text = output.stdout + output.stderr
        assert leaks(text) == [] and not [s for s in wrong_secrets if s in text], text

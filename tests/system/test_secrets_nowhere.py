"""A planted provider key, a client's API key and the Fernet key, after a full run of the
stack (API, executor, recon; successes, an upstream that quotes the key back, failures,
reads, key management, metrics, health detail): found in no response, no log line, no
metrics scrape, no Redis key or value and no MongoDB document. And no pickle in Redis."""

import json
import secrets

import httpx
import redis
from cryptography.fernet import Fernet
from pymongo import MongoClient

from tests.api.test_metrics import metrics_headers
from tests.live import LiveStack, wait_until
from tests.stubs.openai_stub import OpenAIStub

PICKLE_PROTOCOLS = tuple(bytes([0x80, n]) for n in range(2, 6))


def redis_contents(url: str) -> list[bytes]:
    """Every key and every value of the stack's Redis db, whatever its type."""
    client = redis.Redis.from_url(url)
    found = []
    for key in client.scan_iter(count=500):
        found.append(key)
        kind = client.type(key)
        if kind == b"string":
            found.append(client.get(key) or b"")
        elif kind == b"hash":
            found.extend(b for pair in client.hgetall(key).items() for b in pair)
        elif kind == b"list":
            found.extend(client.lrange(key, 0, -1))
        elif kind == b"set":
            found.extend(client.smembers(key))
        elif kind == b"zset":
            found.extend(member for member, _ in client.zrange(key, 0, -1, withscores=True))
        elif kind == b"stream":
            for _, fields in client.xrange(key):
                found.extend(b for pair in fields.items() for b in pair)
    return found


def mongo_contents(uri: str) -> str:
    database = MongoClient(uri).get_default_database()
    return "\n".join(
        json.dumps(doc, default=str)
        for name in database.list_collection_names()
        for doc in database[name].find()
    )


def test_planted_secrets_appear_nowhere_after_a_full_run(tmp_path):
    provider_key = "sk-planted-" + secrets.token_urlsafe(24)
    fernet_key = Fernet.generate_key().decode()
    live = LiveStack(f"sqlite:///{tmp_path / 'live.sqlite3'}", tmp_path)
    live.env.update(CONFIG_FERNET_KEY=fernet_key, PLANTED_API_KEY=provider_key)
    answers: list[httpx.Response] = []
    with OpenAIStub(api_key=provider_key) as good, OpenAIStub(api_key="sk-other-0000") as picky:
        catalog = tmp_path / "chat.yaml"
        catalog.write_text(
            "handlers:\n  - {id: openai.chat, credits: 1}\noffers:\n"
            f"  - {{service: chat, action: ok, price: 1, prompt_template: '{{q}}', "
            f"handler: openai.chat, params: {{base_url: '{good.url}/v1', "
            "api_key_env: PLANTED_API_KEY, model: m}}\n"
            # This upstream refuses the key and quotes it back in its error (as OpenAI does).
            f"  - {{service: chat, action: quoted, price: 1, prompt_template: '{{q}}', "
            f"handler: openai.chat, max_retries: 0, params: {{base_url: '{picky.url}/v1', "
            "api_key_env: PLANTED_API_KEY, model: m}}\n"
        )
        try:
            live.prepare()
            live.manage("catalog", "import", str(catalog))
            probe = tmp_path / "probe.yaml"
            probe.write_text(f"~provider_key: {provider_key}\n")
            live.manage("config", "upload", str(probe), "--name", "secrets_probe")
            live.start_api(workers=1, threads=4)
            live.start_executor("--concurrency", "4")
            live.start_recon("--interval", "1")
            alice = live.client("alice", credits=100)
            api_key = alice.headers["Authorization"].split()[-1]
            ids = []
            for path, body in [
                ("/svc/chat/ok/", {"q": "hello"}),
                ("/svc/chat/quoted/", {"q": "hello"}),
                ("/svc/text/greet/", {"name": "Ada"}),
                ("/svc/text/broken/", {"text": "x"}),
            ]:
                answers.append(alice.post(path, json=body))
                ids.append(answers[-1].json()["id"])

            def ended():
                now = [alice.get(f"/svc/request/{i}/") for i in ids]
                done = all(a.json()["status"] in ("succeeded", "failed") for a in now)
                return now if done else None

            answers.extend(wait_until(ended, what="all four requests to end"))
            assert [a.json()["status"] for a in answers[-4:]] == [
                "succeeded", "failed", "succeeded", "failed",
            ]  # fmt: skip
            answers.append(alice.post("/svc/account/keys/", json={"name": "second"}))
            answers.append(alice.get("/svc/account/keys/"))
            answers.append(alice.get("/svc/account/"))
            answers.append(httpx.get(f"{live.url}/metrics", headers=metrics_headers()))
            answers.append(httpx.get(f"{live.url}/healthz?detail=1", headers=metrics_headers()))
            wrong = {"Authorization": f"Bearer {api_key}x"}
            answers.append(httpx.get(f"{live.url}/svc/account/", headers=wrong))
            live.manage("recon", "--once")
        finally:
            live.stop()
    second_key = answers[-6].json()["key"]  # shown once, in its creation answer: not a leak

    planted = {"provider key": provider_key, "API key": api_key, "Fernet key": fernet_key}
    places = {
        "responses": "\n".join(f"{a.headers}\n{a.text.replace(second_key, '')}" for a in answers),
        "logs": "\n".join(p.read_text(errors="replace") for p in tmp_path.glob("proc-*.log")),
        "metrics": answers[-3].text,
        "mongo": mongo_contents(live.env["MONGO_URI"]),
    }
    redis_values = redis_contents(live.env["REDIS_URL"])
    places["redis"] = "\n".join(v.decode(errors="replace") for v in redis_values)
    assert places["logs"] and places["mongo"] and places["redis"]  # the scan saw something
    leaks = [
        (what, where)
        for what, secret in planted.items()
        for where, text in places.items()
        if secret in text
    ]
    assert leaks == []
    assert second_key not in places["logs"] + places["mongo"] + places["redis"]
    pickles = [v[:40] for v in redis_values if v.startswith(PICKLE_PROTOCOLS)]
    assert pickles == []

"""A cluster on one machine, on PostgreSQL: two API hosts (a gunicorn server each, with its own
multiprocess metrics directory), three executors (one per resource queue, one general), recon
and the webhook worker, under a few hundred requests from three clients, round-robin over the
two APIs. Mid-load one executor is killed -9 and one API stops (SIGTERM); the load generator
retries a request whose connection failed on the other API with the same Idempotency-Key.

Then every accepted request succeeded, ran again only where recon gave it back after the kill,
was charged once, and the `http` resource's cap held across the three executors."""

import os
import secrets
import signal
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from standardwebhooks.webhooks import Webhook

from api.documents import TERMINAL, ServiceRequest
from executor.liveness import EXECUTORS_KEY
from infra.embedded import free_port
from infra.stores import redis_connection
from tests.live import ROOT, LiveStack, wait_until
from tests.system.test_live import assert_ledger_balances, ledger
from tests.webhooks.conftest import Receiver

pytestmark = pytest.mark.system

# The `http` resource's calls in flight at once, across every executor process.
HTTP_CAP = 3
# Seconds the upstream takes per call, so calls overlap and contend for the cap.
UPSTREAM_DELAY = 0.25
# A slot's lease lives 10 s unless renewed: well above the seconds an executor's loop can stall
# on a loaded machine (its first call builds the shared HTTP clients on the loop), so a live
# executor keeps its slots; the killed one's come back 10 s after its last renewal.
RESOURCE_MAP = f"resources:\n  http: {{max_concurrency: {HTTP_CAP}, lease_ttl: 10}}\n"
HOOK_CATALOG = """\
handlers:
  - {{id: http.post, credits: 1}}
offers:
  - {{service: hook, action: call, price: 1, prompt_template: "{{x}}", handler: http.post,
      params: {{url: "{url}"}}}}
"""
# Offer -> (path, input name, price): local.echo's (tests/live.py CATALOG) and the hook's.
OFFERS = {
    "greet": ("/svc/text/greet/", "name", 3),
    "slow": ("/svc/text/slow/", "text", 2),
    "hook": ("/svc/hook/call/", "x", 1),
}
# Submissions, and how many a second the generator starts (the load lasts N / RATE seconds).
N = 300
RATE = 50
THREADS = 12
# Credits per client; bob's are short of what his third of the plan would cost (~200).
CREDITS = {"alice": 1000, "bob": 150, "carol": 1000}
# Liveness and recon: an executor counts as dead 3 s after its last beat; a request queued
# 4 s without a live job is enqueued again; a hold 3 s old whose request ended is settled.
CLUSTER_ENV = {
    "SVC_EXECUTOR_DEAD_AFTER": "3",
    "SVC_RECON_QUEUED_GRACE": "4",
    "SVC_RECON_HOLD_GRACE": "3",
    "SVC_WEBHOOK_ALLOW_PRIVATE": "1",
}


def manage_py(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "manage.py"), *args]


def spawn_on(live: LiveStack, metrics_dir: Path, argv: list[str], **env: str):
    """A process of the stack on a "host" of its own: its own multiprocess metrics directory."""
    metrics_dir.mkdir(parents=True, exist_ok=True)
    return live._spawn(argv, env={**live.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir), **env})


def spawn_api(live: LiveStack, port: int, metrics_dir: Path):
    """LiveStack.start_api's gunicorn (one worker), on `port`, without waiting for it."""
    argv = [
        str(Path(sys.executable).with_name("gunicorn")),
        "marketplace.asgi:application",
        "-c",
        str(ROOT / "deploy" / "gunicorn.conf.py"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--access-logfile",
        "/dev/null",
    ]
    return spawn_on(live, metrics_dir, argv, API_THREADS="8")


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def live_executors() -> set[str]:
    return {name.decode() for name in redis_connection().zrange(EXECUTORS_KEY, 0, -1)}


@dataclass
class Submission:
    client: str
    offer: str
    inputs: dict
    key: str = field(default_factory=lambda: str(uuid.uuid4()))
    status: int | None = None
    body: dict | None = None
    tries: list[str] = field(default_factory=list)  # per try: "api-N status" or "api-N error"
    replayed: bool = False


class LoadGenerator:
    """THREADS threads with httpx clients; submission i goes to API i % 2 first and, when its
    connection fails (or the API answers 5xx), to the other one, with the same Idempotency-Key;
    `idempotency_in_progress` is retried after its Retry-After."""

    def __init__(self, apis: list[str], tokens: dict[str, str], webhook: str):
        self.apis = apis
        self.tokens = tokens
        self.webhook = webhook
        self.done = 0
        self._lock = threading.Lock()
        self._local = threading.local()
        self._opened: list[httpx.Client] = []

    def _client(self, api: str) -> httpx.Client:
        clients = self._local.__dict__.setdefault("clients", {})
        if api not in clients:
            clients[api] = httpx.Client(base_url=api, timeout=30)
            with self._lock:
                self._opened.append(clients[api])
        return clients[api]

    def request(self, step: Submission) -> tuple[str, dict]:
        """The submission's path (carol's name a webhook) and headers, the same on every try."""
        path, _, _ = OFFERS[step.offer]
        if step.client == "carol":
            path = f"{path}?webhook={self.webhook}"
        return path, {"Authorization": self.tokens[step.client], "Idempotency-Key": step.key}

    def submit(self, index: int, step: Submission, started: float) -> Submission:
        time.sleep(max(0.0, started + index / RATE - time.monotonic()))  # the load's shape
        path, headers = self.request(step)
        deadline = time.monotonic() + 30
        turn = index % 2
        while time.monotonic() < deadline:
            api = self.apis[turn]
            name = f"api-{turn + 1}"
            try:
                response = self._client(api).post(path, json=step.inputs, headers=headers)
            except httpx.TransportError as exc:
                step.tries.append(f"{name} {type(exc).__name__}")
                turn = 1 - turn
                continue
            step.tries.append(f"{name} {response.status_code}")
            try:
                body = response.json()
            except ValueError:
                body = {}
            if response.status_code >= 500:
                turn = 1 - turn
                continue
            if (body.get("error") or {}).get("code") == "idempotency_in_progress":
                time.sleep(float(response.headers.get("Retry-After", "1")))
                continue
            step.status, step.body = response.status_code, body
            step.replayed = response.headers.get("Idempotent-Replayed") == "true"
            break
        with self._lock:
            self.done += 1
        return step

    def run(self, plan: list[Submission]) -> list[Submission]:
        started = time.monotonic()
        try:
            with ThreadPoolExecutor(THREADS) as pool:
                return list(pool.map(lambda i: self.submit(i, plan[i], started), range(len(plan))))
        finally:
            for client in self._opened:
                client.close()


def credits_consumed(metrics_dir: Path) -> Counter:
    """svc_credits_consumed_total by resource, summed over the processes of one directory."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(metrics_dir))
    found = Counter()
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "svc_credits_consumed_total":
                found[sample.labels["resource"]] += int(sample.value)
    return found


def describe_statuses() -> Counter:
    return Counter(r.status for r in ServiceRequest.objects.only("status"))


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_a_cluster_on_one_machine_loses_nothing_and_charges_once(
    stack, database_url, tmp_path, json_stub
):
    (tmp_path / "resources.yaml").write_text(RESOURCE_MAP)
    live = stack(
        database_url,
        SVC_RESOURCE_MAP=str(tmp_path / "resources.yaml"),
        CONFIG_FERNET_KEY=Fernet.generate_key().decode(),  # seals the webhook signing secret
        **CLUSTER_ENV,
    )
    (tmp_path / "hook.yaml").write_text(HOOK_CATALOG.format(url=json_stub.url))
    live.manage("catalog", "import", str(tmp_path / "hook.yaml"))
    json_stub.script(delay=UPSTREAM_DELAY)
    run = secrets.token_hex(3)
    http_exec, local_exec, general_exec = (f"{kind}-{run}" for kind in ("http", "local", "all"))
    exec_dirs = {name: tmp_path / f"prometheus-{name}" for name in (http_exec, local_exec)}
    exec_dirs[general_exec] = tmp_path / f"prometheus-{general_exec}"

    # The executors on their resource queues first: each takes its queue's RQ scheduler lock,
    # so the general one, started once they run, holds none (killed, it takes no scheduler
    # with it: the scheduled retries of its queues would wait for recon, 30 s overdue).
    executors = {
        name: spawn_on(
            live,
            exec_dirs[name],
            manage_py("runexecutor", "--name", name, "--queues", queue, "--concurrency", "8"),
        )
        for name, queue in ((http_exec, "svc-http"), (local_exec, "svc-local"))
    }
    host1, host2 = live.metrics_dir, tmp_path / "prometheus-host2"
    api2_port = free_port()
    apis = [live.url, f"http://127.0.0.1:{api2_port}"]
    api1 = spawn_api(live, live.port, host1)
    api2 = spawn_api(live, api2_port, host2)
    spawn_on(live, host1, manage_py("recon", "--interval", "1"))
    spawn_on(live, host1, manage_py("runwebhooks"))
    clients = {name: live.client(name, credits) for name, credits in CREDITS.items()}
    tokens = {name: c.headers["Authorization"] for name, c in clients.items()}
    wait_until(lambda: {http_exec, local_exec} <= live_executors(), what="2 executors")
    executors[general_exec] = spawn_on(
        live,
        exec_dirs[general_exec],
        manage_py(
            "runexecutor", "--name", general_exec, "--concurrency", "8",
            "--queues", "svc-http", "svc-local", "svc-default",
        ),
    )  # fmt: skip
    wait_until(lambda: all(healthy(url) for url in apis), what="both APIs")
    wait_until(lambda: general_exec in live_executors(), what="the general executor")
    assert api1.poll() is None and api2.poll() is None
    secret = clients["carol"].post("/svc/account/webhook_secret/").json()["secret"]

    names = list(CREDITS)
    plan = [
        Submission(
            client=names[i % 3],
            offer=(offer := list(OFFERS)[(i // 3) % 3]),
            inputs={OFFERS[offer][1]: f"{names[i % 3]}-{i}"},
        )
        for i in range(N)
    ]
    with Receiver() as receiver:
        generator = LoadGenerator(apis, tokens, receiver.hook_url())
        load = ThreadPoolExecutor(1).submit(generator.run, plan)

        def submitted(count: int) -> bool:
            if load.done():
                load.result()  # the generator's own failure, if it failed
            return generator.done >= count

        # Mid-load: the general executor is killed -9 while it runs requests …
        wait_until(
            lambda: (
                submitted(N // 3)
                and ServiceRequest.objects(status="running", worker=general_exec).count() >= 2
            ),
            timeout=30,
            what="a third of the load, with requests running on the general executor",
        )
        doomed = executors[general_exec]
        os.killpg(doomed.pid, signal.SIGKILL)  # no shutdown, no hand-back: the executor is gone
        doomed.wait()
        lost = {r.id for r in ServiceRequest.objects(status="running", worker=general_exec)}
        assert lost, "the killed executor ran nothing"
        # … then API 2 stops (SIGTERM: gunicorn's graceful stop) while the load goes on.
        wait_until(lambda: submitted(N // 2), timeout=30, what="half of the load")
        api2.send_signal(signal.SIGTERM)  # to gunicorn's arbiter, as a container stop would
        results = load.result(timeout=60)
        assert api2.wait(30) == 0

        # Every submission got an answer the domain decided: accepted, or (bob) 402.
        answered = Counter((s.client, s.status) for s in results)
        unanswered = [(s.client, s.tries) for s in results if s.status is None]
        assert unanswered == [], unanswered[:5]
        assert {status for _, status in answered} <= {202, 402}, answered
        assert all(answered[(name, 402)] == 0 for name in ("alice", "carol")), answered
        assert answered[("bob", 402)] > 0, answered  # his credits ran out before his plan ended
        assert any(s.tries == ["api-2 202"] for s in results)  # API 2 served until it stopped
        failed_over = [s for s in results if any("api-2" in t for t in s.tries[:-1])]
        assert failed_over, "no request was retried on API 1 after API 2 stopped"
        accepted = [s for s in results if s.status == 202]
        ids = [s.body["id"] for s in accepted]
        assert len(set(ids)) == len(ids)  # each submission its own request, a retry none more
        # The count of accepted requests is the count of distinct ids the clients got.
        assert ServiceRequest.objects.count() == len(set(ids))
        # A client that lost API 2's answer retries on API 1 with the same key: it hears the
        # first answer again, and nothing new is created or held; so does a refused one (402).
        answered_by_api2 = [s for s in results if s.tries[-1] == "api-2 202"]
        refused = [s for s in results if s.status == 402]
        assert answered_by_api2
        for step in answered_by_api2[:30] + refused[:5]:
            path, headers = generator.request(step)
            again = httpx.post(f"{apis[0]}{path}", json=step.inputs, headers=headers, timeout=30)
            assert again.headers.get("Idempotent-Replayed") == "true", again.text
            assert (again.status_code, again.json()) == (step.status, step.body)
        assert ServiceRequest.objects.count() == len(set(ids))

        # Every accepted request ends succeeded: the killed executor's by recon's retry.
        wait_until(
            lambda: ServiceRequest.objects(status__nin=list(TERMINAL)).count() == 0,
            timeout=45,
            what="every request to end",
            describe=describe_statuses,
        )
        docs = {r.id: r for r in ServiceRequest.objects}
        unsuccessful = [(i, d.status, d.error) for i, d in docs.items() if d.status != "succeeded"]
        assert unsuccessful == [], unsuccessful[:5]

        # Ran again only where recon gave it back after the kill: once more per loss.
        def losses(doc) -> list[str]:
            return [e.get("note", "") for e in doc.events if " lost" in e.get("note", "")]

        relost = {i for i, doc in docs.items() if losses(doc)}
        assert relost == lost, (sorted(relost - lost), sorted(lost - relost))
        for doc in docs.values():
            assert doc.attempts == 1 + len(losses(doc)), (doc.id, doc.attempts, doc.events)
            assert all(general_exec in note for note in losses(doc)), doc.events
        assert {docs[i].attempts for i in lost} == {2}
        assert general_exec not in {docs[i].worker for i in lost}
        # The upstream saw each http request once per attempt at most (the killed executor's
        # call may not have reached it), and exactly once when it was not lost.
        calls = Counter(r.json["request_id"] for r in json_stub.requests)
        hooks = {i: doc for i, doc in docs.items() if doc.resource == "http"}
        assert set(calls) == set(hooks)
        for request_id, doc in hooks.items():
            assert doc.attempts - 1 <= calls[request_id] <= doc.attempts, (request_id, calls)
            if doc.attempts == 1:
                assert calls[request_id] == 1, request_id
        # The cap held across the three executors (and was reached: the calls contended).
        assert json_stub.max_inflight == HTTP_CAP, json_stub.max_inflight

        # Charged once: the ledger balances, each client paid exactly for its successes.
        prices = {s.body["id"]: OFFERS[s.offer][2] for s in accepted}
        assert all(docs[i].price == price for i, price in prices.items())
        wait_until(
            lambda: all(c.get("/svc/account/").json()["held"] == 0 for c in clients.values()),
            timeout=20,
            what="every hold settled",
        )
        assert_ledger_balances(live)
        for name, client in clients.items():
            paid = sum(prices[s.body["id"]] for s in accepted if s.client == name)
            account = client.get("/svc/account/").json()
            assert account["balance"] == CREDITS[name] - paid, (name, account["balance"], paid)
        entries, _ = ledger(live)
        captures = Counter(e["request_id"] for e in entries if e["kind"] == "capture")
        assert set(captures) == set(ids) and set(captures.values()) == {1}
        # bob's 402s were right: his balance never since held any of their prices.
        assert {s.client for s in refused} == {"bob"}
        balance = clients["bob"].get("/svc/account/").json()["balance"]
        assert balance < min(OFFERS[s.offer][2] for s in refused)

        # carol's webhooks: one `request.completed` per request, signed, saying what it cost.
        carols = {s.body["id"] for s in accepted if s.client == "carol"}

        def completed() -> dict[str, set]:
            seen = defaultdict(set)
            for attempt in list(receiver.requests):
                payload = Webhook(secret).verify(attempt.body, attempt.headers)
                if payload["type"] == "request.completed":
                    seen[payload["data"]["id"]].add(
                        (attempt.headers["webhook-id"], payload["data"]["status"],
                         payload["data"]["charged"])
                    )  # fmt: skip
            return seen

        delivered = wait_until(
            lambda: (seen := completed()).keys() == carols and seen,
            timeout=30,
            what="a webhook for each of carol's requests",
            describe=lambda: f"{len(completed())} of {len(carols)}",
        )
        assert all(
            len(hooks_of) == 1 and next(iter(hooks_of))[1:] == ("succeeded", prices[i])
            for i, hooks_of in delivered.items()
        ), {i: h for i, h in delivered.items() if len(h) != 1}

    # Each executor host counted the credits its own calls spent, and only those: a live
    # executor exactly its successes, the killed one at most its own (it may die between the
    # success and the count). The API hosts count none.
    ran = defaultdict(Counter)
    for doc in docs.values():
        ran[doc.worker][doc.resource] += doc.handler_credits
    for name, metrics_dir in exec_dirs.items():
        counted = credits_consumed(metrics_dir)
        if name == general_exec:
            assert all(n <= ran[name][r] for r, n in counted.items()), (counted, ran[name])
        else:
            assert counted == ran[name], (name, counted, ran[name])
    assert credits_consumed(host1) == Counter() == credits_consumed(host2)
    metrics = httpx.get(
        f"{apis[0]}/metrics",
        headers={"Authorization": f"Bearer {os.environ['SVC_METRICS_TOKEN']}"},
    )
    assert metrics.status_code == 200
    assert f'svc_resource_slots{{resource="http"}} {float(HTTP_CAP)}' in metrics.text

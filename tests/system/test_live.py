"""The whole system as separate processes (gunicorn API, executors) on SQLite and PostgreSQL:
credits stay exact under concurrent HTTP traffic, resource limits hold across processes."""

import json
import os
import random
import signal
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

import httpx
from cryptography.fernet import Fernet

from api.documents import TERMINAL, ServiceRequest
from infra.embedded import free_port
from tests.live import LiveStack, wait_until


def post(client, path: str, body: dict):
    response = client.post(path, json=body)
    return response.status_code, response.json()


def ledger(live: LiveStack) -> tuple[list[dict], dict[int, dict]]:
    dump = json.loads(live.manage("dumpdata", "api.LedgerEntry", "api.Account"))
    entries = [row["fields"] for row in dump if row["model"] == "api.ledgerentry"]
    accounts = {
        row["fields"]["user"]: row["fields"] for row in dump if row["model"] == "api.account"
    }
    return entries, accounts


def assert_ledger_balances(live: LiveStack) -> None:
    """granted == balance + held + captured per client; held == holds not yet settled."""
    entries, accounts = ledger(live)
    sums: dict[int, Counter] = defaultdict(Counter)
    for entry in entries:
        sums[entry["user"]][entry["kind"]] += entry["amount"]
    for user, account in accounts.items():
        s = sums[user]
        assert s["grant"] == account["balance"] + account["held"] + s["capture"], (account, s)
        assert account["held"] == s["hold"] - s["capture"] - s["release"], (account, s)
    # Each settled hold is settled once and whole: a capture, a release, or (a metered call)
    # a capture of what it used and a release of the rest, summing to the hold.
    holds = {e["request_id"]: e["amount"] for e in entries if e["kind"] == "hold"}
    settled: Counter = Counter()
    for entry in entries:
        if entry["kind"] in ("capture", "release"):
            settled[entry["request_id"]] += entry["amount"]
    assert all(amount == holds.get(request_id) for request_id, amount in settled.items()), (
        settled,
        holds,
    )


def test_40_requests_racing_on_a_balance_for_10_accept_exactly_10(stack, database_url):
    live = stack(database_url)
    live.start_api(workers=2, threads=8)
    alice = live.client("alice", credits=30)  # text/greet costs 3: enough for 10
    with ThreadPoolExecutor(40) as pool:
        codes = Counter(
            pool.map(lambda i: post(alice, "/svc/text/greet/", {"name": f"n{i}"})[0], range(40))
        )
    assert codes == {202: 10, 402: 30}
    account = alice.get("/svc/account/").json()
    assert (account["balance"], account["held"]) == (0, 30)
    live.start_executor("--concurrency", "8")
    wait_until(lambda: alice.get("/svc/account/").json()["held"] == 0, what="captures")
    assert alice.get("/svc/account/").json()["balance"] == 0
    assert_ledger_balances(live)


def test_the_ledger_stays_exact_under_random_concurrent_traffic(stack, database_url):
    live = stack(database_url)
    live.start_api(workers=2, threads=8)
    live.start_executor("--concurrency", "16")
    clients = [live.client(name, credits=60) for name in ("alice", "bob", "carol")]
    rng = random.Random(7)
    plan = [
        (
            rng.choice(clients),
            rng.choice(["greet", "slow", "broken"]),
            rng.randrange(12),
            rng.random() < 0.3,
        )
        for _ in range(90)
    ]

    def act(step):
        client, action, n, cancel = step
        key = "name" if action == "greet" else "text"
        status, body = post(client, f"/svc/text/{action}/", {key: f"v{n}"})
        if cancel and status in (200, 202):
            client.post(f"{body['url']}cancel/")
        return status

    with ThreadPoolExecutor(24) as pool:
        codes = Counter(pool.map(act, plan))
    assert set(codes) <= {200, 202, 402}, codes
    wait_until(
        lambda: all(r.status in TERMINAL for r in ServiceRequest.objects),
        what="every request to end",
    )
    wait_until(
        lambda: all(c.get("/svc/account/").json()["held"] == 0 for c in clients),
        what="every hold settled",
    )
    assert_ledger_balances(live)
    # Settling again changes nothing.
    before = ledger(live)
    ids = [r.id for r in ServiceRequest.objects]
    live.manage(
        "shell",
        "-c",
        (
            "from api.services.accounts import account_capture, account_release\n"
            f"for rid in {ids!r}:\n"
            "    account_capture(request_id=rid)\n    account_release(request_id=rid)"
        ),
    )
    assert ledger(live) == before
    # Charged exactly the succeeded requests.
    statuses = Counter(r.status for r in ServiceRequest.objects)
    assert statuses["succeeded"] > 0 and statuses["failed"] > 0


def test_a_resource_limit_holds_across_two_executor_processes(stack, tmp_path, json_stub):
    resource_map = tmp_path / "resources.yaml"
    resource_map.write_text("resources:\n  http: {max_concurrency: 5, lease_ttl: 10}\n")
    live = stack(SVC_RESOURCE_MAP=str(resource_map))
    catalog = tmp_path / "http.yaml"
    catalog.write_text(
        "handlers:\n  - {id: http.post, credits: 1}\n"
        "offers:\n  - {service: hook, action: call, price: 1, prompt_template: '{x}', "
        f"handler: http.post, params: {{url: '{json_stub.url}'}}}}\n"
    )
    live.manage("catalog", "import", str(catalog))
    live.start_api()
    client = live.client("alice", credits=1000)
    json_stub.script(delay=0.05)
    with ThreadPoolExecutor(16) as pool:
        codes = Counter(
            pool.map(lambda i: post(client, "/svc/hook/call/", {"x": i})[0], range(200))
        )
    assert codes == {202: 200}
    for _ in range(2):
        live.start_executor("--concurrency", "40")
    wait_until(
        lambda: ServiceRequest.objects(status="succeeded").count() == 200,
        timeout=120,
        what="200 requests to succeed",
    )
    assert len(json_stub.requests) == 200
    assert json_stub.max_inflight == 5  # reached, never exceeded


def test_an_exhausted_budget_makes_requests_wait_for_the_next_period(stack, tmp_path):
    resource_map = tmp_path / "resources.yaml"
    resource_map.write_text("resources:\n  local: {budget: 2, period: second}\n")
    live = stack(SVC_RESOURCE_MAP=str(resource_map))
    live.start_api()
    client = live.client("alice", credits=100)
    ids = [post(client, "/svc/text/greet/", {"name": f"n{i}"})[1]["id"] for i in range(6)]
    live.start_executor("--concurrency", "6")
    wait_until(
        lambda: ServiceRequest.objects(status="succeeded").count() == 6,
        timeout=60,
        what="all 6 to succeed",
    )
    starts = Counter(r.started_at.replace(microsecond=0) for r in ServiceRequest.objects)
    assert max(starts.values()) <= 2  # each local.echo call costs 1 credit, budget 2/second
    assert len(starts) >= 3
    assert all(ServiceRequest.objects.get(id=i).attempts == 1 for i in ids)


def test_cancel_stops_a_running_call_and_releases_its_credits(stack):
    live = stack()
    live.manage(
        "shell",
        "-c",
        (
            "from api.models import ServiceOffer as O\n"
            "O.objects.filter(action='slow').update(params={'delay_seconds': 600})"
        ),
    )
    live.start_api()
    client = live.client("alice", credits=10)
    live.start_executor("--concurrency", "4")
    status, created = post(client, "/svc/text/slow/", {"text": "zz"})
    assert status == 202
    wait_until(lambda: client.get(created["url"]).json()["status"] == "running", what="running")
    response = client.post(f"{created['url']}cancel/")
    assert response.status_code == 202 and response.json()["cancel_requested"] is True
    # The 600 s call is stopped by the executor (RQ's stop-job command), not waited out.
    done = wait_until(
        lambda: (r := client.get(created["url"]).json())["status"] == "canceled" and r,
        timeout=30,
        what="the running request to end canceled",
    )
    assert done["results"] == [] and done["error"]["code"] == "canceled"
    # The release follows the status write (the same job, a moment later).
    wait_until(lambda: client.get("/svc/account/").json()["held"] == 0, what="the release")
    account = client.get("/svc/account/").json()
    assert (account["balance"], account["held"]) == (10, 0)
    assert client.post(f"{created['url']}cancel/").status_code == 409


def test_a_deal_bought_over_http_runs_its_pipeline_and_is_charged_once(stack):
    live = stack()
    live.start_api()
    client = live.client("alice", credits=20)
    status, created = post(
        client,
        "/svc/deal/starter/",
        {"inputs": {"name": "Ada", "text": "x"}, "addons": ["text/slow"]},
    )
    assert status == 202 and created["price"] == 6 + 1  # (3 + 4) less 10 %, add-on 2 less 50 %
    live.start_executor("--concurrency", "8")
    done = wait_until(
        lambda: (r := client.get(created["url"]).json())["status"] == "succeeded" and r,
        what="the deal to succeed",
    )
    assert done["results"] == [["Hello Ada"], ["Hello Ada!"], ["x"]]
    assert [c["status"] for c in done["children"]] == ["succeeded"] * 3
    wait_until(lambda: client.get("/svc/account/").json()["held"] == 0, what="the capture")
    account = client.get("/svc/account/").json()
    assert (account["balance"], account["held"]) == (13, 0)
    assert [t["kind"] for t in account["transactions"] if t["request_id"]] == ["capture", "hold"]
    assert_ledger_balances(live)


def test_cancel_of_a_running_deal_over_http(stack):
    live = stack()
    live.start_api()
    client = live.client("alice", credits=10)
    live.start_executor("--concurrency", "4")
    status, created = post(client, "/svc/deal/long/", {"inputs": {"text": "zz"}})
    assert status == 202
    wait_until(lambda: client.get(created["url"]).json()["status"] == "running", what="running")
    response = client.post(f"{created['url']}cancel/")
    assert response.status_code == 200 and response.json()["status"] == "canceled"

    # The 600 s item is stopped by its executor, the pipeline step never starts.
    def all_canceled():
        deal = client.get(created["url"]).json()
        return all(c["status"] == "canceled" for c in deal["children"]) and deal

    done = wait_until(all_canceled, timeout=30, what="the deal's items to end canceled")
    running, step = done["children"]
    assert running["started_at"] is not None and running["results"] == []
    assert step["started_at"] is None and step["error"]["code"] == "deal_canceled"
    account = client.get("/svc/account/").json()
    assert (account["balance"], account["held"]) == (10, 0)
    assert_ledger_balances(live)


def max_overlap(request_ids: list[str]) -> int:
    """Most of these requests that ran at the same moment (from started_at / finished_at)."""
    docs = [ServiceRequest.objects.get(id=i) for i in request_ids]
    edges = sorted(
        [(d.started_at, 1) for d in docs] + [(d.finished_at, -1) for d in docs],
        key=lambda edge: (edge[0], edge[1]),  # an end before a start at the same instant
    )
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def test_a_running_executor_follows_a_new_resource_limit(stack, tmp_path, monkeypatch):
    monkeypatch.setenv("CONFIG_FERNET_KEY", Fernet.generate_key().decode())
    live = stack(SVC_CONFIG_REFRESH_SECONDS="0.5")

    def limit_local_calls(limit: int) -> None:
        path = tmp_path / f"service_map_{limit}.yaml"
        path.write_text(f"resource_map:\n  resources:\n    local: {{max_concurrency: {limit}}}\n")
        live.manage("config", "upload", str(path), "--name", "service_map")

    def run_three(tag: str) -> list[str]:
        ids = [post(client, "/svc/text/slow/", {"text": f"{tag}{n}"})[1]["id"] for n in range(3)]
        wait_until(
            lambda: all(ServiceRequest.objects.get(id=i).status == "succeeded" for i in ids),
            what=f"the {tag} requests to succeed",
        )
        return ids

    limit_local_calls(1)
    live.start_api()
    client = live.client("alice", credits=100)
    live.start_executor("--concurrency", "8")
    assert max_overlap(run_three("one-at-a-time")) == 1
    limit_local_calls(3)  # no restart: the executor reads the new version within a second
    time.sleep(1.5)
    assert max_overlap(run_three("together")) == 3


def test_kill_9_of_an_executor_loses_nothing_and_charges_once(stack, tmp_path):
    live = stack()
    live.manage(
        "shell",
        "-c",
        (
            "from api.models import ServiceOffer as O\n"
            "O.objects.filter(action='slow').update(params={'delay_seconds': 3})"
        ),
    )
    live.start_api()
    client = live.client("alice", credits=200)
    doomed = live.start_executor("--concurrency", "40")
    ids = [post(client, "/svc/text/slow/", {"text": f"k{n}"})[1]["id"] for n in range(30)]
    wait_until(
        lambda: ServiceRequest.objects(id__in=ids, status="running").count() == 30,
        what="30 requests in flight",
    )
    os.killpg(doomed.pid, signal.SIGKILL)  # no shutdown, no hand-back: the executor is gone
    doomed.wait()
    live.start_executor("--concurrency", "40")
    metrics_port = free_port()
    live.start_recon("--interval", "1", "--metrics-port", str(metrics_port))
    wait_until(
        lambda: ServiceRequest.objects(id__in=ids, status="succeeded").count() == 30,
        timeout=120,  # the SLO: retried within 2 minutes
        what="every request to succeed after the kill",
    )
    assert all(ServiceRequest.objects.get(id=i).attempts == 2 for i in ids)
    wait_until(lambda: client.get("/svc/account/").json()["held"] == 0, what="the captures")
    assert client.get("/svc/account/").json()["balance"] == 200 - 30 * 2
    entries, _ = ledger(live)
    captures = Counter(e["request_id"] for e in entries if e["kind"] == "capture")
    assert set(captures) == set(ids) and set(captures.values()) == {1}
    assert_ledger_balances(live)
    metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    assert 'svc_recon_repaired_total{reason="executor_lost"} 30.0' in metrics

"""Redis failing over under load, through the stack as deployed: the API, an executor and recon
reach Redis through three sentinels (REDIS_SENTINELS; tests/sentinel.py on loopback), and the
master is killed while clients submit. Redis loses what it acknowledged and had not replicated
(Jepsen showed it; queued jobs among it), but MongoDB is the record and recon enqueues again a
queued request whose job is gone: every accepted request ends succeeded, charged once."""

import threading
import time

import httpx
import pytest
import redis

from tests.live import wait_until
from tests.sentinel import SentinelRedis
from tests.system.test_live import assert_ledger_balances

pytestmark = pytest.mark.system

PRICE = 3  # text/greet (tests/live.py)


def test_no_accepted_request_is_lost_or_charged_twice_when_the_master_dies(stack, tmp_path):
    redis_cluster = SentinelRedis(tmp_path / "redis")
    try:
        live = stack(
            REDIS_SENTINELS=redis_cluster.addresses,
            REDIS_URL="redis://sentinel/0",
            SVC_RECON_QUEUED_GRACE="2",
        )
        live.start_api(workers=2, threads=4)
        live.start_executor("--concurrency", "8")
        live.start_recon("--interval", "1")
        alice = live.client("alice", credits=100_000)
        accepted: dict[str, str] = {}  # request id → its name
        refused: list[int] = []
        stop = threading.Event()

        def submit(number: int) -> None:
            name = f"n{number}"
            while True:  # until the API accepts it (the same inputs: the same request)
                try:
                    answer = alice.post("/svc/text/greet/", json={"name": name}, timeout=15)
                except httpx.HTTPError:
                    time.sleep(0.2)
                    continue
                if answer.status_code in (200, 202):
                    accepted[answer.json()["id"]] = name
                    return
                refused.append(answer.status_code)  # 503 while Redis fails over: again
                time.sleep(0.2)

        def load() -> None:
            number = 0
            while not stop.is_set():
                submit(number)
                number += 1

        generators = [threading.Thread(target=load) for _ in range(3)]
        for generator in generators:
            generator.start()
        wait_until(lambda: len(accepted) >= 30, what="load before the failover")
        redis_cluster.kill_master()
        redis_cluster.wait(
            lambda: redis_cluster.master_address() == ("127.0.0.1", redis_cluster.replica_port),
            "the sentinels to promote the replica",
        )
        before = len(accepted)
        wait_until(lambda: len(accepted) >= before + 30, what="load after the failover")
        stop.set()
        for generator in generators:
            generator.join(60)

        def ended() -> dict:
            found = {}
            for request_id in list(accepted):
                found[request_id] = alice.get(f"/svc/request/{request_id}/").json()["status"]
            return found

        def all_succeeded():
            statuses = ended()
            return all(s == "succeeded" for s in statuses.values())

        wait_until(
            all_succeeded, timeout=120, what="every accepted request to succeed", describe=ended
        )
        wait_until(lambda: alice.get("/svc/account/").json()["held"] == 0, what="holds settled")
        account = alice.get("/svc/account/").json()
        assert account["balance"] == 100_000 - PRICE * len(accepted)  # each charged once
        assert_ledger_balances(live)
        # It was the sentinels' Redis the stack used, and it goes on on the promoted replica.
        promoted = redis.Redis(port=redis_cluster.replica_port)
        assert promoted.scard("rq:workers") >= 1
        assert promoted.exists("svc:events:" + next(iter(accepted)))
    finally:
        redis_cluster.stop()

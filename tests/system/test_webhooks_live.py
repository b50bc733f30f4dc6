"""Webhooks through the stack as `make run` serves it (the API, an executor, `manage.py
runwebhooks` as processes): a webhook named at intake is signed, retried with the same id, and
says what was charged; one to a private address is refused and changes nothing."""

import sys

from cryptography.fernet import Fernet
from standardwebhooks.webhooks import Webhook

from tests.live import ROOT, wait_until
from tests.webhooks.conftest import Receiver


def test_a_webhook_named_at_intake_is_signed_and_says_what_was_charged(stack):
    live = stack(
        SVC_WEBHOOK_ALLOW_PRIVATE="1",
        SVC_WEBHOOK_RETRY_SCHEDULE="0.2,0.2,0.2",
        CONFIG_FERNET_KEY=Fernet.generate_key().decode(),  # seals the signing secret
    )
    live.start_api(workers=1, threads=4)
    live.start_executor("--concurrency", "2")
    live._spawn([sys.executable, str(ROOT / "manage.py"), "runwebhooks"])
    alice = live.client("alice", credits=20)
    secret = alice.post("/svc/account/webhook_secret/").json()["secret"]
    with Receiver() as receiver:
        receiver.plan = [500, 503]  # the first two attempts fail: the third is delivered
        hook = receiver.hook_url()
        request = alice.post(
            f"/svc/text/slow/?webhook={hook}&webhook_events=start,completed", json={"text": "w"}
        ).json()
        wait_until(lambda: len(receiver.requests) >= 4, timeout=60, what="4 webhook attempts")
        attempts = receiver.requests
    # start failed twice and went out a third time with the same id; completed once.
    by_type: dict[str, list] = {}
    for attempt in attempts:
        payload = Webhook(secret).verify(attempt.body, attempt.headers)
        by_type.setdefault(payload["type"], []).append((attempt.headers["webhook-id"], payload))
    assert sorted(by_type) == ["request.completed", "request.start"]
    start_ids = {webhook_id for webhook_id, _ in by_type["request.start"]}
    assert len(by_type["request.start"]) == 3 and len(start_ids) == 1
    [(_, completed)] = by_type["request.completed"]
    data = completed["data"]
    assert data["id"] == request["id"] and data["status"] == "succeeded"
    assert data["charged"] == 2 and data["ledger_entry"]["kind"] == "capture"
    assert data["ledger_entry"]["amount"] == 2
    account = alice.get("/svc/account/").json()
    assert account["balance"] == 18 and account["held"] == 0


def test_a_webhook_to_a_private_address_is_refused_and_changes_nothing(stack):
    live = stack(SVC_WEBHOOK_ALLOW_PRIVATE="0")
    live.start_api(workers=1, threads=4)
    alice = live.client("alice", credits=20)
    for url in ("https://10.0.0.7/hook", "https://[::ffff:127.0.0.1]/h", "http://8.8.8.8/h"):
        answer = alice.post(f"/svc/text/slow/?webhook={url}", json={"text": "x"})
        assert answer.status_code == 400, url
        assert answer.json()["error"]["code"] == "invalid_webhook"
    account = alice.get("/svc/account/").json()
    assert (account["balance"], account["held"]) == (20, 0)

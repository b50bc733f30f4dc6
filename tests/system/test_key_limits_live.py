"""Per-key limits through real API processes: a key's budget is exact under concurrent POSTs
(like the balance), and rate limits hold across two API servers sharing Redis."""

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from infra.embedded import free_port


def new_key(live, client: str, *options: str) -> str:
    return live.manage("key", "create", client, *options).strip().splitlines()[-1]


def api(url: str, secret: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)


def test_a_key_budget_is_exact_under_40_concurrent_posts(stack, database_url):
    live = stack(database_url)
    live.start_api(workers=2, threads=8)
    live.client("alice", credits=1000)  # the balance is not what limits here
    limited = api(live.url, new_key(live, "alice", "--budget", "30"))  # greet costs 3: ten fit
    with ThreadPoolExecutor(40) as pool:
        answers = list(
            pool.map(lambda i: limited.post("/svc/text/greet/", json={"name": f"n{i}"}), range(40))
        )
    codes = Counter(a.status_code for a in answers)
    assert codes == {202: 10, 402: 30}, codes
    assert {a.json()["error"]["code"] for a in answers if a.status_code == 402} == {
        "key_budget_exceeded"
    }
    account = limited.get("/svc/account/").json()
    assert (account["balance"], account["held"]) == (970, 30)
    (key,) = [k for k in account["keys"] if k["limits"]["budget"] == 30]
    assert (key["usage"]["spent"], key["usage"]["in_flight"]) == (30, 10)


def test_rate_limits_hold_across_two_api_processes(stack):
    live = stack(SVC_ANON_RATE="10/min")
    first = live.start_api(workers=1, threads=4)
    second = live.start_api(workers=1, threads=4, port=free_port())
    live.client("alice", credits=1000)
    secret = new_key(live, "alice", "--rpm", "12")
    # The same key through both servers, alternately: 12 pass in all, not 12 each.
    apis = [api(first, secret), api(second, secret)]
    codes = Counter(
        apis[i % 2].post("/svc/text/greet/", json={"name": f"n{i}"}).status_code for i in range(30)
    )
    assert codes == {202: 12, 429: 18}, codes
    # Bad keys from one IP through both servers: 10 answered 401, then 429.
    bad = [api(first, "nope"), api(second, "nope")]
    codes = Counter(bad[i % 2].post("/svc/text/greet/", json={}).status_code for i in range(30))
    assert codes == {401: 10, 429: 20}, codes

"""Shared resource limits on a real Redis: exact under concurrency and across processes.

Nothing here asserts on elapsed time: leases and budget windows are proven by what
acquire() answers (a Denied, then a Grant), with deadlines only as failure guards.
"""

import asyncio
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from executor import defaults
from executor.resources import (
    Denied,
    Grant,
    Resource,
    ResourceMapError,
    acquire,
    get_resource,
    leased,
    load_resource_map,
    queue_name,
    release,
    renew,
    snapshot,
)
from infra.stores import redis_connection

ROOT = Path(__file__).resolve().parents[2]
# Seconds a test waits for a probe process or for a lease to come back before failing.
DEADLINE = 60


def take(resource: Resource, *, slots: int = 1, credits: int = 0) -> Grant | Denied:
    return acquire(resource, slots=slots, credits=credits, owner="test")


def take_until_denied(resource: Resource, *, credits: int) -> tuple[list[Grant], Denied]:
    grants = []
    for _ in range(10):
        outcome = take(resource, credits=credits)
        if isinstance(outcome, Denied):
            return grants, outcome
        grants.append(outcome)
    raise AssertionError(f"never denied: {grants}")


def wait_for_grant(resource: Resource, **amounts) -> Grant:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        outcome = take(resource, **amounts)
        if isinstance(outcome, Grant):
            return outcome
        time.sleep(0.02)
    raise AssertionError(f"{resource.name} was never granted again")


def credits_used(grant: Grant) -> int:
    return int(redis_connection().get(grant.period_key) or 0)


def server_time() -> float:
    seconds, microseconds = redis_connection().time()
    return seconds + microseconds / 1e6


# --- the resource map -------------------------------------------------------------------------


@pytest.fixture
def write_map(tmp_path, settings):
    def write(text: str) -> Path:
        path = tmp_path / "resource_map.yaml"
        path.write_text(text)
        settings.SVC_RESOURCE_MAP = str(path)
        return path

    return write


def test_it_loads_the_shipped_map():
    resources = load_resource_map()
    assert resources["openai"] == Resource("openai", 16, 100000, "minute", "wait", 30.0)
    assert resources["http"] == Resource("http", max_concurrency=64)
    assert resources["local"] == Resource("local")


def test_it_reads_the_map_named_by_the_environment(write_map):
    write_map(
        "resources:\n"
        "  gpu: {max_concurrency: 2, budget: 50, period: hour, policy: fail, lease_ttl: 2.5}\n"
    )
    assert get_resource("gpu") == Resource("gpu", 2, 50, "hour", "fail", 2.5)


def test_it_reloads_the_map_when_the_file_changes(write_map):
    path = write_map("resources:\n  gpu: {max_concurrency: 2}\n")
    assert get_resource("gpu").max_concurrency == 2
    path.write_text("resources:\n  gpu: {max_concurrency: 3}\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert get_resource("gpu").max_concurrency == 3


def test_an_unknown_resource_is_unlimited(write_map):
    write_map("resources:\n  gpu: {max_concurrency: 1, budget: 1}\n")
    resource = get_resource("elsewhere")
    assert resource == Resource("elsewhere")
    outcomes = [take(resource, slots=10, credits=1000) for _ in range(50)]
    assert all(isinstance(outcome, Grant) for outcome in outcomes)


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "resources:\n  openai: {max_concurrency: -1}\n",
            "resource 'openai': max_concurrency must be a positive integer or null, got -1",
        ),
        (
            "resources:\n  openai: {budget: -5}\n",
            "resource 'openai': budget must be a positive integer or null, got -5",
        ),
        ("resources:\n  openai: {budget: 2.5}\n", "resource 'openai': budget must be"),
        ("resources:\n  openai: {max_concurrency: true}\n", "max_concurrency must be"),
        ("resources:\n  openai: {max_concurency: 3}\n", "max_concurency is not a known key"),
        (
            "resources:\n  openai: {period: weekly}\n",
            "resource 'openai': period must be one of second, minute, hour, day, got 'weekly'",
        ),
        (
            "resources:\n  openai: {policy: drop}\n",
            "resource 'openai': policy must be one of wait, fail, got 'drop'",
        ),
        ("resources:\n  openai: {policy: [wait]}\n", "policy must be one of"),
        (
            "resources:\n  openai: {lease_ttl: 0}\n",
            "resource 'openai': lease_ttl must be a positive number of seconds, got 0",
        ),
        ("resources:\n  openai: 16\n", "resource 'openai': expected a mapping of settings"),
        ("resources:\n  'open ai': {}\n", "resource name 'open ai' must be"),
        ("openai: {max_concurrency: 1}\n", "expected a mapping with the one key `resources`"),
        ("", "expected a mapping with the one key `resources`"),
        ("resources: [openai]\n", "`resources` must be a mapping"),
        ("resources: {openai: {max_concurrency: 1}\n", "not a readable YAML file"),
    ],
)
def test_it_rejects_an_invalid_map_with_a_one_line_reason(write_map, text, message):
    path = write_map(text)
    with pytest.raises(ResourceMapError) as error:
        load_resource_map()
    reason = str(error.value)
    assert message in reason
    assert reason.startswith(f"{path}: ")
    assert "\n" not in reason


def test_a_missing_map_is_an_error(tmp_path, settings):
    settings.SVC_RESOURCE_MAP = str(tmp_path / "absent.yaml")
    with pytest.raises(ResourceMapError, match="absent.yaml: cannot read the resource map"):
        get_resource("openai")


def test_each_resource_has_its_own_queue():
    assert queue_name("openai") == "svc-openai"


# --- concurrency slots ------------------------------------------------------------------------


def test_it_grants_slots_up_to_max_concurrency_then_denies():
    resource = Resource("gpu", max_concurrency=5)
    three = take(resource, slots=3)
    two = take(resource, slots=2)
    assert isinstance(three, Grant) and isinstance(two, Grant)
    assert three.lease_id != two.lease_id and three.slots == 3
    denied = take(resource)
    assert denied.reason == "saturated"
    assert 0 < denied.retry_after <= defaults.SATURATED_RETRY_MAX
    assert snapshot(resource)["inflight"] == 5
    release(three)
    assert isinstance(take(resource, slots=3), Grant)
    release(three)  # a second release frees nothing more: the new grant keeps its slots
    assert snapshot(resource)["inflight"] == 5


def test_it_refuses_a_request_that_could_never_be_granted():
    with pytest.raises(ValueError, match="6 slots exceed max_concurrency 5"):
        take(Resource("gpu", max_concurrency=5), slots=6)
    with pytest.raises(ValueError, match="credits 11"):
        take(Resource("openai", budget=10), credits=11)


def test_a_denial_takes_nothing():
    resource = Resource("openai", max_concurrency=1, budget=5, period="day")
    grant = take(resource, credits=4)
    assert take(resource, credits=1).reason == "saturated"
    assert credits_used(grant) == 4  # the saturated request spent no credits
    release(grant)
    assert take(resource, credits=2).reason == "exhausted"
    assert snapshot(resource)["inflight"] == 0  # the exhausted request holds no slot


def test_renew_keeps_a_lease_alive_past_its_ttl():
    resource = Resource("gpu", max_concurrency=1, lease_ttl=0.5)
    grant = take(resource)
    until = server_time() + 3 * resource.lease_ttl
    while server_time() < until:
        assert renew(grant, resource)
        time.sleep(0.05)
    assert take(resource).reason == "saturated"
    # Left alone, the lease expires; renewing it then says so.
    other = wait_for_grant(resource)
    assert renew(grant, resource) is False
    assert renew(other, resource) is True
    release(other)
    assert renew(other, resource) is False


def test_leased_renews_in_the_background_and_releases_on_exit():
    resource = Resource("gpu", max_concurrency=1, lease_ttl=0.6)
    grant = take(resource)

    async def hold_past_the_ttl():
        async with leased(grant, resource) as held:
            assert held is grant
            await asyncio.sleep(4 * resource.lease_ttl)
            return take(resource), snapshot(resource)["inflight"]

    during, inflight = asyncio.run(hold_past_the_ttl())
    assert isinstance(during, Denied) and inflight == 1
    assert snapshot(resource)["inflight"] == 0
    assert renew(grant, resource) is False


def test_leased_releases_when_the_body_raises_or_is_cancelled():
    resource = Resource("gpu", max_concurrency=2)
    failing, cancelled = take(resource), take(resource)

    async def fail():
        async with leased(failing, resource):
            raise RuntimeError("boom")

    async def cancel():
        entered = asyncio.Event()

        async def body():
            async with leased(cancelled, resource):
                entered.set()
                await asyncio.sleep(DEADLINE)

        task = asyncio.create_task(body())
        await entered.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(fail())
    asyncio.run(cancel())
    assert snapshot(resource)["inflight"] == 0


# --- credit budgets ---------------------------------------------------------------------------


def test_the_budget_grants_until_it_is_exhausted():
    resource = Resource("openai", budget=10, period="minute")
    grants, denied = take_until_denied(resource, credits=4)
    assert denied.reason == "exhausted"
    assert 0 < denied.retry_after <= 60
    assert {grant.credits for grant in grants} == {4}
    # A minute may roll over between two calls: the window that denied holds exactly two.
    window = grants[-1].period_key
    assert Counter(grant.period_key for grant in grants)[window] == 2
    assert credits_used(grants[-1]) == 8


def test_a_refund_gives_the_credits_back_once():
    resource = Resource("openai", budget=10, period="day")  # one window throughout the test
    first, second = take(resource, credits=4), take(resource, credits=4)
    assert first.period_key == second.period_key
    assert take(resource, credits=4).reason == "exhausted"
    release(first, refund=True)
    assert credits_used(first) == 4
    release(first, refund=True)
    release(first)
    assert credits_used(first) == 4
    assert isinstance(take(resource, credits=4), Grant)
    release(second)  # the call was made: its credits stay spent, even if refunded later
    release(second, refund=True)
    assert credits_used(second) == 8
    assert take(resource, credits=4).reason == "exhausted"


def test_the_budget_comes_back_when_the_window_rolls_over():
    resource = Resource("tight", budget=10, period="second")
    grants, denied = take_until_denied(resource, credits=4)
    assert denied.reason == "exhausted"
    assert 0 < denied.retry_after <= 1
    time.sleep(denied.retry_after)  # retry_after is from server time: the window has ended
    grant = take(resource, credits=4)
    assert isinstance(grant, Grant), grant
    assert grant.period_key > grants[-1].period_key
    assert credits_used(grant) == 4


def test_concurrent_acquisitions_never_overspend_the_budget():
    resource = Resource("openai", budget=100, period="minute")
    with ThreadPoolExecutor(16) as pool:
        outcomes = list(pool.map(lambda _: take(resource, credits=1), range(300)))
    grants = [outcome for outcome in outcomes if isinstance(outcome, Grant)]
    assert {o.reason for o in outcomes if isinstance(o, Denied)} == {"exhausted"}
    # 300 attempts: even if a minute rolls over mid-test, one window saw at least 150 of them.
    per_window = Counter(grant.period_key for grant in grants)
    assert max(per_window.values()) == 100
    for window, granted in per_window.items():
        assert int(redis_connection().get(window)) == granted <= 100


def test_the_snapshot_reports_slots_and_budget():
    resource = Resource("openai", max_concurrency=4, budget=10, period="day")
    take(resource, slots=2, credits=3)
    now = server_time()
    report = snapshot(resource)
    ends_at = report.pop("window_ends_at")
    assert report == {
        "resource": "openai",
        "inflight": 2,
        "max_concurrency": 4,
        "budget": 10,
        "budget_used": 3,
        "period": "day",
    }
    assert ends_at % 86400 == 0 and now < ends_at <= now + 86400
    unlimited = snapshot(Resource("local"))
    assert unlimited["budget_used"] is None and unlimited["window_ends_at"] is None

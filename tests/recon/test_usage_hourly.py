"""Hourly usage (recon/usage.py) and its admin page (recon/admin.py)."""

import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from api.models import UsageRecord
from recon import usage

pytestmark = pytest.mark.django_db

NOON = datetime(2026, 3, 1, 12, 30, tzinfo=UTC)  # "now": the window is 11:00–12:59
ELEVEN, TWELVE = datetime(2026, 3, 1, 11, tzinfo=UTC), datetime(2026, 3, 1, 12, tzinfo=UTC)
PAGE = "/admin/recon/usagehour/"


def record(
    user,
    at: datetime,
    *,
    status="succeeded",
    handler="local.echo",
    resource="local",
    calls=1,
    credits=2,
    price=3,
) -> None:
    row = UsageRecord.objects.create(
        request_id=f"r-{UsageRecord.objects.count()}",
        user=user,
        service="text",
        action="greet",
        handler=handler,
        resource=resource,
        status=status,
        calls=calls,
        credits=credits,
        price=price if status == "succeeded" else 0,
    )
    UsageRecord.objects.filter(pk=row.pk).update(created_at=at)  # auto_now_add ignores a value


@pytest.fixture
def two_hours_of_usage(alice, bob):
    record(alice, ELEVEN - timedelta(seconds=1))  # 10:59:59: before the window
    record(alice, ELEVEN)
    record(alice, ELEVEN + timedelta(minutes=59), status="failed", calls=2, credits=4)
    record(bob, ELEVEN + timedelta(minutes=5), credits=5, price=7)
    record(alice, TWELVE + timedelta(minutes=1), handler="http.post", resource="http")
    record(alice, TWELVE + timedelta(minutes=2), status="canceled")
    record(bob, TWELVE + timedelta(minutes=29))
    record(bob, TWELVE + timedelta(hours=1))  # 13:00: after "now"


def figures(doc: dict) -> tuple:
    keys = ("handler", "resource", "client", "requests", "succeeded", "failed")
    return (doc["hour"], *(doc[k] for k in keys), doc["calls"], doc["credits"], doc["price"])


def stored() -> list[dict]:
    return [{k: v for k, v in doc.items() if k != "computed_at"} for doc in usage.hourly()]


def test_it_sums_the_records_per_hour_handler_resource_and_client(two_hours_of_usage):
    assert usage.aggregate_hours(hours=2, at=NOON) == 5
    assert [figures(doc) for doc in usage.hourly()] == [
        (TWELVE, "http.post", "http", "alice", 1, 1, 0, 1, 2, 3),
        (TWELVE, "local.echo", "local", "alice", 1, 0, 0, 1, 2, 0),  # canceled
        (TWELVE, "local.echo", "local", "bob", 1, 1, 0, 1, 2, 3),
        (ELEVEN, "local.echo", "local", "alice", 2, 1, 1, 3, 6, 3),
        (ELEVEN, "local.echo", "local", "bob", 1, 1, 0, 1, 5, 7),
    ]


def test_the_figures_match_the_records_in_the_window(two_hours_of_usage):
    usage.aggregate_hours(hours=2, at=NOON)
    rows = UsageRecord.objects.filter(
        created_at__gte=ELEVEN, created_at__lt=TWELVE + timedelta(hours=1)
    )
    docs = usage.hourly()
    for field in ("calls", "credits", "price"):
        assert sum(doc[field] for doc in docs) == sum(getattr(r, field) for r in rows)
    assert sum(doc["requests"] for doc in docs) == rows.count() == 6


def test_it_is_idempotent_and_two_recons_agree(two_hours_of_usage, alice):
    usage.aggregate_hours(hours=2, at=NOON)
    first = stored()
    usage.aggregate_hours(hours=2, at=NOON)
    assert stored() == first
    barrier = threading.Barrier(3)

    def one():
        barrier.wait()
        usage.aggregate_hours(hours=2, at=NOON)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert stored() == first
    # A record written late in an hour: the next pass replaces that hour's document.
    record(alice, TWELVE + timedelta(minutes=30), price=10)
    usage.aggregate_hours(hours=2, at=NOON + timedelta(minutes=1))
    after = {(d["hour"], d["handler"], d["client"]): d for d in stored()}
    assert len(after) == len(first)
    assert after[(TWELVE, "local.echo", "alice")]["requests"] == 2
    assert after[(TWELVE, "local.echo", "alice")]["price"] == 10


def test_a_later_pass_keeps_the_hours_it_no_longer_covers(two_hours_of_usage):
    usage.aggregate_hours(hours=2, at=NOON)
    usage.aggregate_hours(hours=1, at=NOON + timedelta(hours=1))  # 13:00 only
    hours = {doc["hour"] for doc in usage.hourly()}
    assert hours == {ELEVEN, TWELVE, TWELVE + timedelta(hours=1)}


def test_readers_can_ask_for_recent_hours_and_one_client(two_hours_of_usage, bob):
    usage.aggregate_hours(hours=2, at=NOON)
    assert {d["hour"] for d in usage.hourly(since=TWELVE)} == {TWELVE}
    assert {d["client"] for d in usage.hourly(user_id=bob.pk)} == {"bob"}
    assert len(usage.hourly(since=TWELVE, user_id=bob.pk)) == 1


def test_the_window_starts_on_a_whole_hour():
    assert usage.window_start(NOON, 1) == TWELVE
    assert usage.window_start(NOON, 2) == ELEVEN
    with pytest.raises(ValueError):
        usage.window_start(NOON, 0)


# --- admin ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def operator(django_user_model):
    user = django_user_model.objects.create_user("operator", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_usagehour"))
    return user


@pytest.fixture
def recent_usage(alice, bob):
    """Records in the current hour, so that the page's default window shows them."""
    at = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)  # the page's hours are UTC
    record(alice, at, credits=11, price=13)
    record(alice, at, credits=11, price=13)
    record(bob, at, status="failed", calls=4, credits=17)
    usage.aggregate_hours()
    return at


def test_the_admin_page_shows_the_figures_and_totals(client, operator, recent_usage):
    client.force_login(operator)
    assert reverse("admin:recon_usagehour_changelist") == PAGE
    page = client.get(PAGE).content.decode()
    assert recent_usage.strftime("%Y-%m-%d %H:00") in page
    assert "<td>alice</td>" in page and "<td>bob</td>" in page
    alice_row = "<td>2</td><td>2</td><td>0</td>\n        <td>2</td><td>22</td><td>26</td>"
    bob_row = "<td>1</td><td>0</td><td>1</td>\n        <td>4</td><td>17</td><td>0</td>"
    assert alice_row in page and bob_row in page
    total = '<tr class="usage-total">'
    assert total in page
    footer = page[page.index(total) :]
    assert (
        "<th>3</th><th>2</th><th>1</th>" in footer and "<th>6</th><th>39</th><th>26</th>" in footer
    )


def test_the_admin_page_needs_login(client, recent_usage):
    response = client.get(PAGE)
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_the_admin_page_needs_the_view_permission(client, django_user_model, recent_usage):
    client.force_login(django_user_model.objects.create_user("staffer", is_staff=True))
    assert client.get(PAGE).status_code == 403


def test_the_admin_index_lists_hourly_usage(client, operator):
    client.force_login(operator)
    assert PAGE in client.get("/admin/").content.decode()


def test_the_admin_page_says_when_there_is_nothing(client, operator):
    client.force_login(operator)
    assert "No usage in these hours" in client.get(f"{PAGE}?hours=x").content.decode()

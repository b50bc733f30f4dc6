"""The admin login's throttles: django-axes locks a username+address pair out after
SVC_ADMIN_LOGIN_FAILURES wrong passwords, and the flood guard (marketplace/login_guard.py)
answers 429 before any password is hashed when an address logs in too often or the
deployment's password-check slots are all taken."""

import time

import pytest
import redis
from axes.models import AccessAttempt
from django.contrib.auth.hashers import MD5PasswordHasher

from marketplace import login_guard

pytestmark = pytest.mark.django_db

PASSWORD = "the-right-password"
LOGIN = "/admin/login/"


class CountingHasher(MD5PasswordHasher):
    """A fast hasher that counts the passwords it hashes (every check hashes once: a known
    user's password to compare, an unknown user's to take the same time)."""

    algorithm = "counting_md5"
    calls = 0

    def encode(self, password, salt):
        CountingHasher.calls += 1
        return super().encode(password, salt)


@pytest.fixture(autouse=True)
def counting_hasher(settings):
    settings.PASSWORD_HASHERS = [f"{__name__}.CountingHasher"]


@pytest.fixture
def hashed():
    """The number of passwords hashed since the test began (its setup's excluded)."""
    CountingHasher.calls = 0
    return lambda: CountingHasher.calls


@pytest.fixture
def olga(operator):
    operator.set_password(PASSWORD)
    operator.save()
    return operator


def log_in(client, password: str, username: str = "olga", **meta):
    return client.post(
        LOGIN, {"username": username, "password": password, "next": "/admin/"}, **meta
    )


def logged_in(client) -> bool:
    return "_auth_user_id" in client.session


def test_the_right_password_logs_in(client, olga):
    assert log_in(client, PASSWORD).status_code == 302
    assert logged_in(client)


def test_five_wrong_passwords_lock_the_pair_out_even_for_the_right_one(client, olga, hashed):
    statuses = [log_in(client, f"wrong-{n}").status_code for n in range(5)]
    assert statuses == [200, 200, 200, 200, 429]  # the fifth failure locks

    before = hashed()
    response = log_in(client, PASSWORD)

    assert response.status_code == 429
    assert not logged_in(client)
    assert hashed() == before  # axes refuses a locked-out pair before the password check
    page = response.content.decode()
    assert "Too many failed logins for this username" in page and "15 minutes" in page
    assert "Service marketplace" in page  # the admin's own page, not a bare error
    assert response["Retry-After"] == "900"
    # The attempts support may read in the admin keep no password.
    [attempt] = AccessAttempt.objects.all()
    assert "wrong-" not in attempt.post_data and PASSWORD not in attempt.post_data


def test_the_lockout_is_per_username_and_address(client, olga, staff_user):
    other = staff_user("otto")
    other.set_password(PASSWORD)
    other.save()
    for n in range(5):
        log_in(client, f"wrong-{n}", REMOTE_ADDR="198.51.100.1")

    assert log_in(client, PASSWORD, REMOTE_ADDR="198.51.100.2").status_code == 302
    client.logout()
    assert log_in(client, PASSWORD, "otto", REMOTE_ADDR="198.51.100.1").status_code == 302


def test_behind_one_proxy_the_forwarded_address_is_the_one_locked_out(client, olga, settings):
    settings.SVC_PROXY_COUNT = 1
    proxy = {"REMOTE_ADDR": "10.0.0.2"}
    for n in range(5):
        log_in(client, f"wrong-{n}", HTTP_X_FORWARDED_FOR="203.0.113.5", **proxy)

    assert log_in(client, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.5", **proxy).status_code == 429
    # The client's own part of the header changes nothing: the proxy's entry is the last one.
    forged = "198.51.100.9, 203.0.113.5"
    assert log_in(client, PASSWORD, HTTP_X_FORWARDED_FOR=forged, **proxy).status_code == 429
    assert log_in(client, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.6", **proxy).status_code == 302


def test_without_a_trusted_proxy_the_forwarded_header_is_ignored(client, olga, settings):
    settings.SVC_PROXY_COUNT = 0
    for n in range(5):
        log_in(client, f"wrong-{n}", HTTP_X_FORWARDED_FOR=f"203.0.113.{n}")

    response = log_in(client, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.77")
    assert response.status_code == 429 and not logged_in(client)


def test_an_address_over_the_login_rate_gets_429_without_hashing(client, olga, settings, hashed):
    settings.SVC_ADMIN_LOGIN_RATE = "3/min"
    # Many usernames from one address: below every pair's lockout, so axes alone would hash.
    statuses = [log_in(client, "guess", f"user{n}").status_code for n in range(3)]
    assert statuses == [200, 200, 200] and hashed() == 3

    refused = [log_in(client, "guess", f"user{n}") for n in range(3, 10)]

    assert {r.status_code for r in refused} == {429}
    assert hashed() == 3
    assert "Too many login attempts from your address" in refused[0].content.decode()
    assert 1 <= int(refused[0]["Retry-After"]) <= 60
    # Another address is not held back.
    assert log_in(client, PASSWORD, REMOTE_ADDR="198.51.100.3").status_code == 302


def test_the_rate_counts_the_forwarded_address_behind_a_proxy(client, olga, settings, hashed):
    settings.SVC_PROXY_COUNT = 1
    settings.SVC_ADMIN_LOGIN_RATE = "2/min"
    for n in range(2):
        log_in(client, "guess", f"user{n}", HTTP_X_FORWARDED_FOR="203.0.113.5")

    assert log_in(client, "x", "u", HTTP_X_FORWARDED_FOR="203.0.113.5").status_code == 429
    assert log_in(client, PASSWORD, HTTP_X_FORWARDED_FOR="203.0.113.6").status_code == 302


def test_a_login_while_every_password_check_slot_is_taken_gets_429(client, olga, settings, hashed):
    settings.SVC_ADMIN_LOGIN_CONCURRENCY = 2
    held = [login_guard.slot_acquire(), login_guard.slot_acquire()]
    assert None not in held and login_guard.slot_acquire() is None

    response = log_in(client, PASSWORD)

    assert response.status_code == 429 and not logged_in(client)
    assert hashed() == 0
    assert "Too many logins are being checked right now" in response.content.decode()
    for token in held:
        login_guard.slot_release(token)
    assert log_in(client, PASSWORD).status_code == 302


def test_a_login_gives_its_slot_back(client, olga, settings):
    settings.SVC_ADMIN_LOGIN_CONCURRENCY = 1
    for password in ("wrong", "wrong", PASSWORD):
        assert log_in(client, password).status_code in (200, 302)
    assert login_guard.slot_acquire() is not None  # none left held


def test_a_slot_a_dead_process_held_expires(settings, monkeypatch):
    settings.SVC_ADMIN_LOGIN_CONCURRENCY = 1
    monkeypatch.setattr(login_guard, "SLOT_TTL_MS", 50)
    assert login_guard.slot_acquire() is not None  # never released
    assert login_guard.slot_acquire() is None

    time.sleep(0.1)
    assert login_guard.slot_acquire() is not None


def test_pages_other_than_the_login_post_are_not_counted(client, olga, settings):
    settings.SVC_ADMIN_LOGIN_RATE = "1/min"
    for _ in range(3):
        assert client.get(LOGIN).status_code == 200
    assert log_in(client, PASSWORD).status_code == 302
    for _ in range(3):
        assert client.get("/admin/").status_code == 200


def test_without_redis_the_guard_lets_logins_through(client, olga, monkeypatch):
    def unreachable(source):
        def script(**kwargs):
            raise redis.ConnectionError("down")

        return script

    monkeypatch.setattr(login_guard, "_script", unreachable)
    assert log_in(client, PASSWORD).status_code == 302

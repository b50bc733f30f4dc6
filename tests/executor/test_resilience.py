"""Timeouts, retries, circuit breakers, fallbacks and credentials of handler calls,
against loopback upstreams that fail on purpose (tests/stubs/flaky.py)."""

import io
import json
import logging
import textwrap
import time
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from mongoengine.connection import get_db
from prometheus_client import REGISTRY, generate_latest

from api.documents import ServiceRequest
from api.models import ServiceHandler, ServiceOffer, UsageRecord
from api.services.catalog import catalog_export, catalog_import
from configs import live
from executor import breaker, defaults, resilience, resources
from executor.handlers import HandlerError
from infra.stores import redis_connection
from tests.api.test_admin import offer_form
from tests.helpers import run_worker, submit

ROOT = Path(__file__).resolve().parents[2]
MAIN_KEY = "sk-main-0123456789-SECRET"
BACKUP_KEY = "sk-backup-9876543210-SECRET"
ACCESS_KEY, SECRET_KEY = "AKIA-RESILIENCE-TEST", "s3cr3t-access-secret-value"

SERVICE_MAP = """\
resource_map:
  resources:
    http: {{max_retries: 2, retry_backoff: 0.01, retry_backoff_max: 0.05,
            breaker_threshold: {threshold}, breaker_cooldown: {cooldown}}}
    openai: {{max_retries: 2, retry_backoff: 0.01, retry_backoff_max: 0.05,
              breaker_threshold: {threshold}, breaker_cooldown: {cooldown}}}
    local: {{max_concurrency: null}}
credentials:
  main: {{kind: api_key, ~api_key: {main}}}
  backup: {{kind: api_key, ~api_key: {backup}}}
  storage: {{kind: access_key, ~access_key: {access}, ~secret_key: {secret}}}
  public: {{kind: none}}
handlers:
  http.post: {{credentials: main{timeouts}}}
  openai.chat: {{credentials: main, model: gpt-stub}}
"""


@pytest.fixture(autouse=True)
def fernet_key(fresh_fernet_key, settings):
    settings.SVC_RESOURCE_MAP = ""
    return fresh_fernet_key


def upload_service_map(tmp_path, *, threshold=5, cooldown=30, timeouts="", text=None) -> None:
    text = text or SERVICE_MAP.format(
        threshold=threshold,
        cooldown=cooldown,
        main=MAIN_KEY,
        backup=BACKUP_KEY,
        access=ACCESS_KEY,
        secret=SECRET_KEY,
        timeouts=f", timeouts: {timeouts}" if timeouts else "",
    )
    path = tmp_path / "service_map.yaml"
    path.write_text(textwrap.dedent(text))
    call_command("config", "upload", str(path), "--name", "service_map", stdout=io.StringIO())
    live.forget()


@pytest.fixture
def service_map(tmp_path):
    upload_service_map(tmp_path)


def stored(request_id: str) -> ServiceRequest:
    return ServiceRequest.objects.get(id=request_id)


def try_notes(request: ServiceRequest) -> list[str]:
    return [e["note"] for e in request.events if e.get("note", "").startswith("try ")]


def retries_counted(resource: str, reason: str) -> float:
    labels = {"resource": resource, "reason": reason}
    return REGISTRY.get_sample_value("svc_upstream_retries_total", labels) or 0.0


def post_offer(make_offer, url: str, action="post", **fields) -> ServiceOffer:
    return make_offer(action=action, handler="http.post", params={"url": url}, price=5, **fields)


# --- retries ---------------------------------------------------------------------------------


def test_it_retries_a_503_then_succeeds(service_map, alice_api, make_offer, flaky_stub):
    post_offer(make_offer, flaky_stub.url)
    flaky_stub.fail_next(503)
    before = retries_counted("http", "5xx")
    request_id = submit(alice_api, "/svc/text/post/", {"x": "hi"})["id"]
    run_worker()

    done = stored(request_id)
    assert done.status == "succeeded", done.error
    assert flaky_stub.hits == 2
    assert (done.attempts, done.tries, done.handler_used) == (1, 2, "http.post")
    [note] = try_notes(done)
    assert note.startswith(
        "try 1 of http.post failed: upstream_error: the upstream answered HTTP 503"
    )
    assert "retrying in" in note
    assert retries_counted("http", "5xx") == before + 1
    body = alice_api.get(f"/svc/request/{request_id}/").json()
    assert (body["tries"], body["handler_used"], body["attempts"]) == (2, "http.post", 1)


def test_it_waits_as_long_as_retry_after_says(service_map, alice_api, make_offer, flaky_stub):
    post_offer(make_offer, flaky_stub.url)
    flaky_stub.fail_next(429, headers={"Retry-After": "1"})
    request_id = submit(alice_api, "/svc/text/post/", {"x": "hi"})["id"]
    run_worker()

    assert stored(request_id).status == "succeeded"
    assert flaky_stub.hits == 2
    # The backoff alone would wait at most 0.05 s (retry_backoff_max): Retry-After won.
    assert flaky_stub.hit_times[1] - flaky_stub.hit_times[0] >= 0.95
    assert "retrying in 1.0s" in try_notes(stored(request_id))[0]


def test_a_400_fails_at_once_with_the_upstreams_message(
    service_map, alice, alice_api, make_offer, flaky_stub
):
    post_offer(make_offer, flaky_stub.url)
    flaky_stub.fail_always(400, message="model 'x' does not exist")
    request_id = submit(alice_api, "/svc/text/post/", {"x": "hi"})["id"]
    run_worker()

    done = stored(request_id)
    assert done.status == "failed"
    assert done.error == {
        "code": "upstream_error",
        "message": "the upstream answered HTTP 400: model 'x' does not exist",
    }
    assert flaky_stub.hits == 1 and done.tries == 1
    assert try_notes(done)[0].endswith("no retry")
    alice.account.refresh_from_db()
    assert (alice.account.balance, alice.account.held) == (1000, 0)  # released


def test_it_retries_no_more_than_the_offers_max_retries(
    service_map, alice_api, make_offer, flaky_stub
):
    post_offer(make_offer, flaky_stub.url, max_retries=1)
    flaky_stub.fail_always(502)
    request_id = submit(alice_api, "/svc/text/post/", {"x": "hi"})["id"]
    run_worker()

    done = stored(request_id)
    assert (done.status, done.error["code"]) == ("failed", "upstream_error")
    assert flaky_stub.hits == 2 and done.tries == 2 and done.max_retries == 1
    assert len(try_notes(done)) == 2


def test_a_try_that_outlives_the_handlers_timeout_is_retried_then_fails(
    tmp_path, alice_api, make_offer, flaky_stub
):
    upload_service_map(tmp_path, timeouts="{connect: 1, read: 0.3, total: 0.3}")
    post_offer(make_offer, flaky_stub.url, max_retries=1)
    flaky_stub.script(delay=1.0)
    request_id = submit(alice_api, "/svc/text/post/", {"x": "hi"})["id"]
    run_worker()

    done = stored(request_id)
    assert (done.status, done.error["code"]) == ("failed", "upstream_timeout")
    assert flaky_stub.hits == 2


def test_timeouts_stay_below_the_job_timeout():
    from executor.handlers import get_handler

    post = get_handler("http.post")
    timeouts = resilience.try_timeouts(post, {"total": 30}, {}, time_left=10)
    assert timeouts.total is None  # the job's own timeout ends it, with code `timeout`
    assert timeouts.read < 10 and timeouts.connect < 10
    assert resilience.try_timeouts(post, None, {"timeout": 2}, time_left=100).total == 2


def test_backoff_grows_is_capped_and_jittered():
    policy = resilience.RetryPolicy(max_retries=10, backoff=1.0, backoff_max=8.0)
    highest = [resilience.backoff_delay(policy, n, rng=lambda a, b: b) for n in range(1, 7)]
    lowest = [resilience.backoff_delay(policy, n, rng=lambda a, b: a) for n in range(1, 7)]
    assert highest == [1, 2, 4, 8, 8, 8] and lowest == [0.5, 1, 2, 4, 4, 4]
    assert resilience.parse_retry_after("3") == 3.0
    assert resilience.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert resilience.parse_retry_after("soon") is None


# --- fallbacks -------------------------------------------------------------------------------


def test_a_fallback_serves_while_the_primary_is_down(
    tmp_path, alice, alice_api, make_offer, flaky_stub, flaky_backup
):
    upload_service_map(tmp_path, threshold=2)
    make_offer(handler="http.post")  # the fallback's handler row (its credits)
    make_offer(
        action="chat",
        handler="openai.chat",
        params={"base_url": f"{flaky_stub.url}/v1"},
        price=7,
        max_retries=1,
        fallbacks=[
            {"handler": "http.post", "params": {"url": flaky_backup.url}, "credentials": "backup"}
        ],
    )
    flaky_stub.fail_always(503)
    first = submit(alice_api, "/svc/text/chat/", {"x": "one"})["id"]
    run_worker()
    # Its two tries opened the primary's breaker (threshold 2); the fallback answered.
    assert flaky_stub.hits == 2
    assert breaker.snapshot(resources.get_resource("openai"))["state"] == "open"
    second = submit(alice_api, "/svc/text/chat/", {"x": "two"})["id"]
    run_worker()

    assert flaky_stub.hits == 2  # the open breaker kept the second away from the primary
    assert flaky_backup.hits == 2
    for request_id in (first, second):
        body = alice_api.get(f"/svc/request/{request_id}/").json()
        assert body["status"] == "succeeded", body["error"]
        assert body["handler_used"] == "http.post" and body["price"] == 7
    assert flaky_backup.requests[0].headers["Authorization"] == f"Bearer {BACKUP_KEY}"
    notes = [e.get("note", "") for e in stored(second).events]
    assert any(n.startswith("falling back to http.post") and "breaker is open" in n for n in notes)
    alice.account.refresh_from_db()
    assert alice.account.balance == 1000 - 2 * 7  # the primary's price, twice
    used = UsageRecord.objects.filter(request_id__in=[first, second])
    assert {(u.handler, u.resource, u.price) for u in used} == {("http.post", "http", 7)}


def test_without_a_fallback_an_open_breaker_fails_fast(tmp_path, alice_api, make_offer, flaky_stub):
    upload_service_map(tmp_path, threshold=1)
    post_offer(make_offer, flaky_stub.url, max_retries=0)
    flaky_stub.fail_always(500)
    first = submit(alice_api, "/svc/text/post/", {"x": 1})["id"]
    second = submit(alice_api, "/svc/text/post/", {"x": 2})["id"]
    run_worker()

    assert stored(first).error["code"] == "upstream_error"
    assert stored(second).error["code"] == "upstream_unavailable"
    assert "circuit breaker is open" in stored(second).error["message"]
    assert flaky_stub.hits == 1


def test_with_breaker_policy_wait_a_request_stays_queued_while_open(
    tmp_path, alice_api, make_offer, flaky_stub
):
    text = SERVICE_MAP.replace(
        "breaker_threshold: {threshold}", "breaker_threshold: 1, breaker_policy: wait", 1
    )
    upload_service_map(
        tmp_path,
        text=text.format(
            threshold=1,
            cooldown=30,
            main=MAIN_KEY,
            backup=BACKUP_KEY,
            access=ACCESS_KEY,
            secret=SECRET_KEY,
            timeouts="",
        ),
    )
    post_offer(make_offer, flaky_stub.url, max_retries=0)
    flaky_stub.fail_always(500)
    submit(alice_api, "/svc/text/post/", {"x": 1})
    waiting = submit(alice_api, "/svc/text/post/", {"x": 2})["id"]
    run_worker()

    assert flaky_stub.hits == 1
    request = stored(waiting)
    assert (request.status, request.attempts) == ("queued", 0)  # deferred, not run


# --- the circuit breaker ---------------------------------------------------------------------


def test_half_open_lets_exactly_one_trial_through():
    resource = resources.Resource("trialres", breaker_threshold=2, breaker_cooldown=0.2)
    for _ in range(2):
        breaker.record(resource, outcome="failure", owner="a")
    assert breaker.allow(resource, owner="b", trial_ttl=5).decision == "open"
    time.sleep(0.25)
    decisions = [breaker.allow(resource, owner=f"c{i}", trial_ttl=5).decision for i in range(3)]
    assert decisions == ["trial", "open", "open"]
    assert breaker.record(resource, outcome="success", owner="c1") == "half_open"  # not the trial
    assert breaker.record(resource, outcome="success", owner="c0") == "closed"
    assert breaker.snapshot(resource)["failures"] == 0
    gauge = REGISTRY.get_sample_value("svc_breaker_state", {"resource": "trialres"})
    assert gauge == 0


def test_a_failed_trial_opens_the_breaker_again():
    resource = resources.Resource("again", breaker_threshold=1, breaker_cooldown=0.1)
    breaker.record(resource, outcome="failure", owner="a")
    time.sleep(0.15)
    assert breaker.allow(resource, owner="t", trial_ttl=5).decision == "trial"
    assert breaker.record(resource, outcome="failure", owner="t") == "open"
    assert breaker.snapshot(resource)["opens"] == 2
    assert REGISTRY.get_sample_value("svc_breaker_state", {"resource": "again"}) == 2


def test_a_process_trusts_a_closed_breaker_briefly_and_its_own_failure_ends_the_trust(
    monkeypatch,
):
    """Found closed with no failure, a breaker is trusted for CLOSED_TRUST_SECONDS without a
    read; another process opening it is seen after that, this process's failure at once."""
    monkeypatch.setattr(defaults, "BREAKER_CLOSED_TRUST_SECONDS", 0.3)
    resource = resources.Resource("trusted", breaker_threshold=1, breaker_cooldown=30)

    def open_elsewhere():  # what another executor's failures leave in Redis
        redis_connection().hset(
            breaker._key("trusted"), mapping={"state": "open", "open_until": 2**50}
        )

    assert breaker.allow(resource, owner="a", trial_ttl=5).decision == "closed"
    open_elsewhere()
    assert breaker.trusted(resource) is not None
    assert breaker.allow(resource, owner="a", trial_ttl=5).decision == "closed"  # unasked
    time.sleep(0.35)
    assert breaker.trusted(resource) is None
    assert breaker.allow(resource, owner="a", trial_ttl=5).decision == "open"

    breaker.reset("trusted")
    assert breaker.allow(resource, owner="b", trial_ttl=5).decision == "closed"
    assert breaker.record(resource, outcome="failure", owner="b") == "open"
    assert breaker.trusted(resource) is None
    assert breaker.allow(resource, owner="c", trial_ttl=5).decision == "open"


def test_a_breaker_with_failures_is_not_trusted():
    resource = resources.Resource("counting", breaker_threshold=3, breaker_cooldown=30)
    breaker.record(resource, outcome="failure", owner="a")
    assert breaker.allow(resource, owner="b", trial_ttl=5).failures == 1
    assert breaker.trusted(resource) is None


def test_the_admin_shows_each_resources_breaker(admin_client, service_map, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    resource = resources.get_resource("http")
    for _ in range(5):
        breaker.record(resource, outcome="failure", owner="x")
    response = admin_client.get(reverse("admin:api_circuitbreaker_changelist"))
    assert response.status_code == 200
    rows = {row["resource"]: row for row in response.context["rows"]}
    assert rows["http"]["state"] == "open" and rows["http"]["failures"] == 5
    assert rows["openai"]["state"] == "closed"
    assert b"breaker-open" in response.content


# --- credentials -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("credentials", "expected"),
    [
        ("", f"Bearer {MAIN_KEY}"),  # the handler's default set
        ("backup", f"Bearer {BACKUP_KEY}"),  # the offer's override: another account
        ("storage", "Basic "),  # access key + secret key
        ("public", None),  # kind none
    ],
)
def test_an_offer_may_override_the_handlers_credentials(
    service_map, alice_api, make_offer, json_stub, credentials, expected
):
    post_offer(make_offer, json_stub.url, credentials=credentials)
    request_id = submit(alice_api, "/svc/text/post/", {"x": "hi"})["id"]
    run_worker()

    assert stored(request_id).status == "succeeded"
    sent = json_stub.requests[0].headers.get("Authorization")
    assert sent == expected if expected is None else sent.startswith(expected)
    if credentials == "storage":
        import base64

        assert (
            base64.b64decode(sent.removeprefix("Basic ")).decode() == f"{ACCESS_KEY}:{SECRET_KEY}"
        )


def test_an_upstream_error_quoting_the_key_is_redacted_everywhere(
    service_map, alice_api, make_offer, flaky_stub, caplog
):
    caplog.set_level(logging.DEBUG)
    post_offer(make_offer, flaky_stub.url)
    flaky_stub.fail_always(500, message=f"invalid key {MAIN_KEY} for this project")
    request_id = submit(alice_api, "/svc/text/post/", {"x": "hi"})["id"]
    run_worker()

    done = stored(request_id)
    assert flaky_stub.requests[0].headers["Authorization"] == f"Bearer {MAIN_KEY}"  # it was sent
    assert done.error["message"] == (
        "the upstream answered HTTP 500: invalid key [redacted] for this project"
    )
    raw = get_db().requests.find_one({"_id": request_id})
    assert len(raw["events"]) >= 5  # queued, running, three tries
    assert MAIN_KEY not in json.dumps(raw, default=str)  # document, events, error
    response = alice_api.get(f"/svc/request/{request_id}/")
    assert MAIN_KEY not in response.content.decode()
    assert MAIN_KEY not in caplog.text
    assert MAIN_KEY not in generate_latest(REGISTRY).decode()
    configs = list(get_db().config_versions.find())
    assert configs and MAIN_KEY not in json.dumps(configs, default=str)  # stored encrypted


def test_a_missing_credential_set_fails_without_calling(
    service_map, alice_api, make_offer, json_stub
):
    offer = post_offer(make_offer, json_stub.url, credentials="backup")
    request_id = submit(alice_api, "/svc/text/post/", {"x": "hi"})["id"]
    ServiceRequest.objects(id=request_id).update(set__credentials="gone")
    run_worker()
    done = stored(request_id)
    assert done.error == {
        "code": "missing_credentials",
        "message": "credential set 'gone' is not in the active service_map config",
    }
    assert json_stub.requests == [] and offer.credentials == "backup"


# --- configuration: config, offers, catalog --------------------------------------------------


@pytest.mark.parametrize(
    ("credentials", "handlers", "problem"),
    [
        (
            "k: {kind: api_key, api_key: plain}",
            "",
            "credentials.k.api_key: a secret: write it as ~api_key",
        ),
        ("k: {kind: oauth}", "", "credentials.k.kind: required, one of none, api_key, access_key"),
        ("k: {kind: access_key, ~access_key: a}", "", "credentials.k.secret_key: required"),
        ("k: {kind: none}", "http.post: {credentials: other}", "no set 'other' under credentials:"),
        ("k: {kind: none}", "http.post: {timeouts: {total: 100000}}", "below SVC_JOB_TIMEOUT"),
    ],
)
def test_a_bad_credentials_config_is_refused_with_its_reason(
    tmp_path, capsys, credentials, handlers, problem
):
    text = f"resource_map: {{resources: {{}}}}\ncredentials: {{{credentials}}}\n"
    if handlers:
        text += f"handlers: {{{handlers}}}\n"
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("config", "upload", str(path), "--name", "service_map", stderr=err)
    assert problem in err.getvalue()
    assert get_db().config_versions.count_documents({}) == 0


def test_a_bad_resilience_setting_in_the_resource_map_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("resource_map: {resources: {http: {max_retries: 11, breaker_threshold: 0}}}\n")
    err = io.StringIO()
    with pytest.raises(CommandError):
        call_command("config", "upload", str(path), "--name", "service_map", stderr=err)
    assert "max_retries must be an integer from 0 to 10" in err.getvalue()


@pytest.mark.django_db
def test_the_admin_saves_resilience_fields_and_refuses_bad_ones(
    admin_client, service_map, settings
):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    ServiceHandler.objects.create(id="local.echo", credits=1)
    ServiceHandler.objects.create(id="http.post", credits=2)
    form = offer_form(max_retries="3", fallbacks='["http.post"]', credentials="backup")
    url = reverse("admin:api_serviceoffer_add")
    bad = admin_client.post(
        url, {**form, "fallbacks": '["nope.none"]', "credentials": "gone", "max_retries": "11"}
    )
    errors = bad.context["adminform"].form.errors
    assert "no handler 'nope.none' is registered" in " ".join(errors["fallbacks"])
    assert "no credential set 'gone'" in " ".join(errors["credentials"])
    assert "max_retries" in errors and not ServiceOffer.objects.exists()

    assert admin_client.post(url, form).status_code == 302
    offer = ServiceOffer.objects.get()
    assert (offer.max_retries, offer.fallbacks, offer.credentials) == (
        3,
        [{"handler": "http.post"}],
        "backup",
    )


@pytest.mark.django_db
def test_the_catalog_imports_and_exports_resilience_fields(service_map):
    catalog = {
        "handlers": [{"id": "openai.chat", "credits": 2}, {"id": "http.post", "credits": 1}],
        "offers": [
            {
                "service": "text",
                "action": "chat",
                "price": 4,
                "prompt_template": "{x}",
                "handler": "openai.chat",
                "max_retries": 0,
                "credentials": "backup",
                "fallbacks": [{"handler": "http.post", "params": {"url": "http://127.0.0.1:9"}}],
            },
            {
                "service": "text",
                "action": "plain",
                "price": 1,
                "prompt_template": "{x}",
                "handler": "http.post",
            },
        ],
    }
    assert catalog_import(data=catalog).ok
    exported = {f"{o['service']}/{o['action']}": o for o in catalog_export()["offers"]}
    assert exported["text/chat"]["fallbacks"] == catalog["offers"][0]["fallbacks"]
    assert (exported["text/chat"]["max_retries"], exported["text/chat"]["credentials"]) == (
        0,
        "backup",
    )
    assert not {"max_retries", "fallbacks", "credentials"} & set(exported["text/plain"])

    bad = {"handlers": [], "offers": [{**catalog["offers"][1], "fallbacks": ["http.post", 3]}]}
    report = catalog_import(data=bad)
    assert "fallbacks[1]: a handler id or a mapping" in str(report.problems[0])
    assert ServiceOffer.objects.get(action="plain").fallbacks == []  # nothing changed


@pytest.mark.django_db
def test_a_request_keeps_the_resilience_settings_it_was_accepted_with(
    service_map, alice_api, make_offer, json_stub
):
    make_offer(action="echo")  # local.echo's row
    offer = post_offer(make_offer, json_stub.url, max_retries=4, fallbacks=["local.echo"])
    request_id = submit(alice_api, "/svc/text/post/", {"x": "hi"})["id"]
    ServiceOffer.objects.filter(pk=offer.pk).update(max_retries=0, fallbacks=[])
    request = stored(request_id)
    assert request.max_retries == 4
    assert request.fallbacks == [
        {
            "handler": "local.echo",
            "params": {"url": json_stub.url},
            "credentials": None,
            "credits": 1,
            "resource": "local",
        }
    ]


def test_handler_errors_carry_their_classification():
    error = HandlerError("upstream_error", "x", retryable=True, retry_after=2.0, reason="429")
    assert (error.retryable, error.retry_after, error.reason) == (True, 2.0, "429")
    assert HandlerError("bad_params", "y").reason == "bad_params"

"""Structured logs: the request context from intake to the handler, JSON lines, redaction, and
the same records at a (loopback) Fluentd."""

import io
import json
import logging
import secrets
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command

from configs import keys
from configs import live as config_live
from executor import runtime
from infra import logs

# A separate process that logs a decrypted config secret, a bearer token and a traceback
# quoting the secret: every one must reach Fluentd redacted.
LEAK = """
import logging
from configs import live
secret = live.config("observability_probe")["planted"]
log = logging.getLogger("svc.leak")
log.warning("config secret %s", secret)
log.warning("upstream said: Authorization: Bearer abcdefghijklmnop1234")
try:
    raise RuntimeError(f"boom with {secret}")
except RuntimeError:
    log.exception("it failed")
"""


# ---------------------------------------------------------------------------------------------
# Redaction


# Cases with a fresh key carry an id of their own: every test process must name them alike.
@pytest.mark.parametrize(
    "text, secret",
    [
        ("calling with Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig", "eyJhbGci"),
        ("header Token 0123456789abcdef0123456789abcdef01234567", "0123456789abcdef0123"),
        ("key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx rejected", "AbCdEfGhIjKlMnOp"),
        pytest.param(f"fernet key {Fernet.generate_key().decode()} in env", None, id="fernet-key"),
        pytest.param(
            f"token {Fernet(Fernet.generate_key()).encrypt(b'x').decode()} stored",
            "gAAAAA",
            id="fernet-token",
        ),
        ("connect postgres://svc:hunter2pass@db:5432/svc failed", "hunter2pass"),
        ("Error connecting to redis://svc:r3dis-pass@cache:6379/0", "r3dis-pass"),
        ("Error connecting to redis://:only-a-pass@cache:6379/0", "only-a-pass"),
        ("mongodb://svc:m0ngo%40pass@db1:27017,db2:27017/svc?authSource=admin", "m0ngo%40pass"),
        ("server at mongodb+srv://svc:srv-pass-1@cluster.example/svc", "srv-pass-1"),
        ("posting https://discord.com/api/webhooks/123/AbCdEf-secret_tok", "AbCdEf-secret_tok"),
        ('payload {"api_key": "abcd1234efgh"} sent', "abcd1234efgh"),
        ("retry with password=correcthorse&x=1", "correcthorse"),
        ("client_secret: s3cr3tvalue", "s3cr3tvalue"),
    ],
)
def test_secret_shaped_values_are_redacted(text, secret):
    redacted = logs.redact(text)
    assert logs.REDACTED in redacted
    if secret is None:  # the whole Fernet key
        secret = text.split()[2]
    assert secret not in redacted


def test_ordinary_text_is_left_alone():
    text = "request succeeded id=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    assert logs.redact(text) == text


def _capture(logger_name: str, formatter: logging.Formatter | None = None):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logs.ContextFilter())
    handler.addFilter(logs.RedactFilter())
    handler.setFormatter(formatter or logs.JsonFormatter())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, stream, handler


def test_a_registered_secret_is_redacted_from_message_arguments_and_traceback():
    secret = "reg-" + secrets.token_hex(8)
    logs.register_secret({"nested": [secret]})
    logger, stream, handler = _capture("svc.test.redact")
    try:
        logger.info("value %s and %r", secret, {"k": secret})
        try:
            raise ValueError(f"bad {secret}")
        except ValueError:
            logger.exception("failed")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2  # one line per record, the traceback inside it
    assert lines[0]["message"] == f"value {logs.REDACTED} and {{'k': '{logs.REDACTED}'}}"
    assert f"ValueError: bad {logs.REDACTED}" in lines[1]["exc"]
    assert secret not in stream.getvalue()


def test_short_registered_values_are_not_redacted():
    logs.register_secret("abc")
    assert logs.redact("abc abc") == "abc abc"


def test_decrypted_config_secrets_are_registered(tmp_path, monkeypatch, db):
    monkeypatch.setenv(keys.KEY_ENV, Fernet.generate_key().decode())
    secret = "cfg-" + secrets.token_hex(10)
    path = tmp_path / "probe.yaml"
    path.write_text(textwrap.dedent(f"nested:\n  ~token_like: {secret}\n"))
    call_command("config", "upload", str(path), "--name", "probe", stdout=io.StringIO())
    config_live.forget()
    assert config_live.config("probe") == {"nested": {"token_like": secret}}
    assert logs.redact(f"oops {secret}!") == f"oops {logs.REDACTED}!"


def test_the_environment_s_secrets_are_registered():
    key = Fernet.generate_key().decode()
    logs.register_env_secrets(
        {
            "DJANGO_SECRET_KEY": "django-" + "x1y2z3" * 4,
            "CONFIG_FERNET_KEY": f"{key},",
            "DATABASE_URL": "postgres://svc:dbpass-1234@db/svc",
            "MONGO_URI": "mongodb://svc:mongo%40pass-9@db/svc?authSource=admin",
            "REDIS_URL": "redis://:redis-pass-77@cache:6379/0",
            "SVC_METRICS_TOKEN": "metrics-token-5150",
        }
    )
    text = logs.redact(f"{'django-' + 'x1y2z3' * 4} {key[:-1]} dbpass-1234")
    assert "x1y2z3" not in text and "dbpass-1234" not in text
    # A store password alone (as a driver might print it: decoded) and the metrics token.
    text = logs.redact("auth mongo@pass-9 / mongo%40pass-9 / redis-pass-77 / metrics-token-5150")
    assert text == " / ".join([f"auth {logs.REDACTED}"] + [logs.REDACTED] * 3)


# ---------------------------------------------------------------------------------------------
# Context and format


def test_records_carry_the_context_inside_the_block_only():
    logger, stream, handler = _capture("svc.test.context")
    try:
        with logs.context(request_id="r-1", client=7):
            logs.bind(offer="text/greet", attempt=2)
            logger.info("inside")
        logger.info("outside")
    finally:
        logger.removeHandler(handler)
    inside, outside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert (inside["request_id"], inside["client"], inside["offer"], inside["attempt"]) == (
        "r-1",
        7,
        "text/greet",
        2,
    )
    assert "request_id" not in outside and "offer" not in outside
    assert inside["role"] == logs.role()


def test_unknown_context_fields_are_refused():
    with pytest.raises(ValueError, match="user"), logs.context(user="alice"):
        pass


def test_the_context_follows_a_job_onto_the_executor_loop_and_its_threads():
    """Handlers run on the executor's shared loop (async) or its thread pool (sync): the job
    thread's context must reach both, and must not leak into another job's thread."""
    logger, stream, handler = _capture("svc.test.loop")

    async def handler_call():
        logger.info("async handler")
        await runtime.asyncio.to_thread(logger.info, "sync handler")

    def job(request_id):
        with logs.context(request_id=request_id):
            runtime.run(handler_call())
        logger.info("after the job")

    try:
        with ThreadPoolExecutor(1) as pool:  # one thread, reused like RQ's job threads
            pool.submit(job, "r-a").result()
            pool.submit(job, "r-b").result()
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["message"], r.get("request_id")) for r in lines] == [
        ("async handler", "r-a"),
        ("sync handler", "r-a"),
        ("after the job", None),
        ("async handler", "r-b"),
        ("sync handler", "r-b"),
        ("after the job", None),
    ]


def test_intake_binds_the_request_id_to_the_http_request_s_records(alice_api, greet_offer):
    logger, stream, handler = _capture("api.services.intake")
    try:
        response = alice_api.post("/svc/text/greet/", {"name": "Ada", "place": "P"}, format="json")
    finally:
        logger.removeHandler(handler)
    assert response.status_code == 202
    (accepted,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert accepted["request_id"] == response.json()["id"]
    assert accepted["offer"] == "text/greet" and accepted["client"] == alice_api.user.pk
    assert "request_id" not in logs.current()  # the middleware dropped it afterwards


def test_plain_lines_append_the_context():
    logger, stream, handler = _capture("svc.test.plain", logs.PlainFormatter())
    try:
        with logs.context(request_id="r-9"):
            logger.info("hello")
    finally:
        logger.removeHandler(handler)
    assert stream.getvalue().rstrip().endswith("svc.test.plain hello [request_id=r-9]")


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="LOG_FORMAT='xml'"):
        logs.logging_config(log_format="xml", level="INFO")


def test_fluentd_joins_the_handlers_only_when_a_host_is_set():
    assert "fluentd" not in logs.logging_config(log_format="json", level="INFO")["handlers"]
    config = logs.logging_config(
        log_format="json", level="INFO", fluentd_host="127.0.0.1", fluentd_port=1
    )
    assert config["root"]["handlers"] == ["console", "fluentd"]
    assert config["handlers"]["fluentd"]["filters"] == ["context", "redact"]


def test_bind_outside_a_block_changes_nothing():
    logs.bind(request_id="stray")
    assert "request_id" not in logs.current()


def test_rq_s_per_job_lines_are_dropped_and_its_other_lines_kept():
    """RQ logs four lines per job that the executor's own request lines repeat; its start,
    stop and failure lines stay."""
    import logging.config

    from rq.worker.base import logger as worker_log  # RQ's workers log here

    stream = io.StringIO()
    config = logs.logging_config(log_format="plain", level="INFO")
    config["handlers"]["console"]["stream"] = stream
    logging.config.dictConfig(config)
    try:
        worker_log.info("Worker %s: %s: %s", "w1", "svc:q", "job-1")
        worker_log.info("Successfully completed %s job in %ss on worker %s", "d", 0.1, "w1")
        worker_log.info("Worker %s: %s: %s (%s)", "w1", "svc:q", "Job OK", "job-1")
        worker_log.info("Worker %s: job %s result is kept for %s seconds", "w1", "job-1", 500)
        worker_log.info("Worker %s: started with PID %d, version %s", "w1", 7, "2.12")
        worker_log.warning("Worker %s: %s: %s", "w1", "svc:q", "job-2")
        logging.getLogger("httpx").info("HTTP Request: POST http://up/ 200")
    finally:
        from django.conf import settings

        logging.config.dictConfig(settings.LOGGING)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert "started with PID 7" in lines[0] and "job-2" in lines[1]

"""Settings, all read from the environment (see API.md, "Environment")."""

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp import constants as csp
from django.core.exceptions import ImproperlyConfigured

from infra import logs
from infra.envs import (
    envbool,
    envfloat,
    envhostports,
    envint,
    envlist,
    envmatching,
    envnetworks,
    envoptional,
    envstr,
    load_dev_env,
)

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(envstr("DATA_DIR", str(BASE_DIR / ".data"))).resolve()
# `make run` writes the addresses of the servers it started here, so `manage.py …` in another
# shell finds them; variables set in the environment always win.
load_dev_env(DATA_DIR / "dev.env")

# Where this runs. `production` (the default, so a deploy is secure unless told otherwise)
# refuses DEBUG, wants DJANGO_ALLOWED_HOSTS and turns on HTTPS-only cookies, HSTS and the
# HTTPS redirect (below); `development` (`make run` and the tests set it) allows local hosts
# over plain HTTP.
SVC_ENVIRONMENT = envstr("SVC_ENVIRONMENT", "production")
if SVC_ENVIRONMENT not in ("production", "development"):
    raise ImproperlyConfigured(
        f"SVC_ENVIRONMENT must be production or development, not {SVC_ENVIRONMENT!r}"
    )
PRODUCTION = SVC_ENVIRONMENT == "production"
DEBUG = envbool("DJANGO_DEBUG", False)
if DEBUG and PRODUCTION:
    raise ImproperlyConfigured(
        "DJANGO_DEBUG is on in production: unset it (or, on a development machine, set "
        "SVC_ENVIRONMENT=development)."
    )
SECRET_KEY = envstr(
    "DJANGO_SECRET_KEY",
    hint="`make run` generates one under DATA_DIR; elsewhere "
    "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'",
)
# Host names this deployment answers to (comma-separated); in development the local ones.
ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS") or (
    [] if PRODUCTION else ["localhost", "127.0.0.1", "[::1]", "testserver"]
)
if not ALLOWED_HOSTS:
    raise ImproperlyConfigured(
        "DJANGO_ALLOWED_HOSTS is not set: name the host names this API answers to, e.g. "
        "DJANGO_ALLOWED_HOSTS=api.example.com (or, on a development machine, set "
        "SVC_ENVIRONMENT=development)."
    )
# Origins (scheme://host) whose POSTs to the admin pass the CSRF check besides this host's
# own: e.g. https://admin.example.com when a proxy serves the admin under another name.
CSRF_TRUSTED_ORIGINS = envlist("DJANGO_CSRF_TRUSTED_ORIGINS")
# The header a TLS-terminating proxy sets to "https" (e.g. X-Forwarded-Proto), so Django sees
# requests as secure; unset when nothing in front of the API sets it (a client could forge it).
SVC_PROXY_SSL_HEADER = envoptional("SVC_PROXY_SSL_HEADER")
if SVC_PROXY_SSL_HEADER:
    SECURE_PROXY_SSL_HEADER = (
        "HTTP_" + SVC_PROXY_SSL_HEADER.strip().upper().replace("-", "_"),
        "https",
    )
# HTTPS only in production: browsers keep to HTTPS for DJANGO_SECURE_HSTS_SECONDS (a year;
# 0 turns HSTS off), plain-HTTP requests are redirected (DJANGO_SECURE_SSL_REDIRECT=0 when the
# proxy does it), cookies never travel in clear. /healthz and /metrics are exempt from the
# redirect: load balancers and Prometheus call the API servers directly, inside the network.
SESSION_COOKIE_HTTPONLY = True
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
if PRODUCTION:
    SECURE_HSTS_SECONDS = envint("DJANGO_SECURE_HSTS_SECONDS", 31536000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_SSL_REDIRECT = envbool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^livez$", r"^readyz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
# Content-Security-Policy (django-csp) on every answer: the pages (the admin) load scripts,
# styles and images from this origin only, never inline, and may not be framed.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [csp.SELF],
        "script-src": [csp.SELF],
        "style-src": [csp.SELF],
        "img-src": [csp.SELF, "data:"],
        "frame-ancestors": [csp.NONE],
        "form-action": [csp.SELF],
        "base-uri": [csp.SELF],
    }
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "django_prometheus",
    "csp",
    "infra.apps.InfraConfig",
    "api",
    "executor",
    "recon",
    "configs",
    "webhooks",
    # Operators: every change audited (api/admin/audit.py), admin logins throttled.
    "auditlog",
    "axes",
]

MIDDLEWARE = [
    "api.http.probes.ProbeMiddleware",  # /livez, /readyz: before the host is checked
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "infra.logs.ContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "marketplace.login_guard.LoginGuardMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "api.admin.audit.AuditMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
    "axes.middleware.AxesMiddleware",  # last: it turns a refused login into the lockout page
]

ROOT_URLCONF = "marketplace.urls"
WSGI_APPLICATION = "marketplace.wsgi.application"
# The API is served under ASGI (marketplace/asgi.py): the sync views in a thread pool, the
# long-lived answers (SSE, WebSocket, `Prefer: wait`) on the event loop.
ASGI_APPLICATION = "marketplace.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        envstr("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}"), conn_max_age=60
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    if envbool("SVC_TEST_DB_IS_MAIN", False):
        # Set by the test plugin (DATA_DIR is a throwaway there): executor subprocesses that
        # tests start open the same SQLite file as the tests.
        DATABASES["default"]["TEST"] = {"NAME": DATABASES["default"]["NAME"]}
    # WAL + a busy timeout let the API and the executor write concurrently.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }

MONGO_URI = envstr(
    "MONGO_URI",
    hint="Run `make run` (it starts an embedded MongoDB) or point "
    "MONGO_URI at a server, e.g. mongodb://127.0.0.1:27017/svc.",
)
# Redis through Sentinel (failover): REDIS_SENTINELS, a comma-separated host:port list, and
# the name the sentinels monitor the master by. Then REDIS_URL gives only the database number
# and the password (its host is ignored; redis://:password@sentinel/0), and every process
# (infra/stores.py) asks the sentinels for the master, and again after a failover.
REDIS_SENTINELS = envhostports("REDIS_SENTINELS")
REDIS_SENTINEL_MASTER = envstr("REDIS_SENTINEL_MASTER", "mymaster")
REDIS_URL = envstr(
    "REDIS_URL",
    "redis://sentinel/0" if REDIS_SENTINELS else None,
    hint="Run `make run` (it starts an embedded Redis) or point "
    "REDIS_URL at a server, e.g. redis://127.0.0.1:6379/0.",
)

CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "svc",
        # JSON, never pickle (infra/stores.py): nothing in Redis may make a reader run code.
        "OPTIONS": {
            "serializer": "infra.stores.CacheSerializer",
            # Through the sentinels when there are (REDIS_SENTINELS), else REDIS_URL's server.
            "pool_class": "infra.stores.CachePool",
        },
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Largest request body the intake accepts; larger bodies answer 413 payload_too_large.
SVC_MAX_BODY_BYTES = envint("SVC_MAX_BODY_BYTES", 1024 * 1024)
# Deepest nesting of arrays and objects an intake body may have (400 invalid_json past it).
SVC_MAX_JSON_DEPTH = envint("SVC_MAX_JSON_DEPTH", 32)
# Most inputs one request may name (400 invalid_inputs past it).
SVC_MAX_INPUTS = envint("SVC_MAX_INPUTS", 64)
# Longest string input, in characters (400 invalid_inputs past it).
SVC_MAX_INPUT_CHARS = envint("SVC_MAX_INPUT_CHARS", 100_000)
# Per-client intake rate (DRF throttle syntax), counted in Redis so it holds across processes.
SVC_INTAKE_RATE = envstr("SVC_INTAKE_RATE", "6000/min")
# Per API key: reads and cancels (GET /svc/request/…, /svc/account/…, cancels), same syntax.
SVC_READ_RATE = envstr("SVC_READ_RATE", "6000/min")
# Per client IP: requests without a valid key (none, malformed, unknown, revoked, expired) and
# the public catalog; over it they answer 429 instead of 401.
SVC_ANON_RATE = envstr("SVC_ANON_RATE", "120/min")
# The kind of API key this deployment issues and accepts (`svc_live_…` or `svc_test_…`), so a
# test key never works in production nor a live key on a developer's stack. Default: live.
SVC_API_KEY_ENVIRONMENT = envstr("SVC_API_KEY_ENVIRONMENT", "live")
if SVC_API_KEY_ENVIRONMENT not in ("live", "test"):
    raise ImproperlyConfigured(
        f"SVC_API_KEY_ENVIRONMENT must be live or test, not {SVC_API_KEY_ENVIRONMENT!r}"
    )
# Seconds an RQ job may run before the worker kills it (a handler should time out well before).
SVC_JOB_TIMEOUT = envint("SVC_JOB_TIMEOUT", 900)
# Jobs one executor process keeps in flight (`runexecutor --concurrency` overrides).
EXECUTOR_CONCURRENCY = envint("EXECUTOR_CONCURRENCY", 64)
# Seconds in-flight jobs get to finish on SIGTERM before they are handed back to their queues.
EXECUTOR_SHUTDOWN_GRACE = envint("EXECUTOR_SHUTDOWN_GRACE", 25)
# Recon (`manage.py recon`): seconds between sweeps; runs of a request whose executor died
# before it is failed (`abandoned`); seconds a queued request may lack an RQ job, and a hold
# a settlement, before recon repairs them.
SVC_RECON_INTERVAL = envint("SVC_RECON_INTERVAL", 10)
# Port where recon serves its own /metrics, on SVC_RECON_METRICS_ADDR (0: none; in
# multiprocess mode on one host, the API's /metrics shows recon's series anyway).
SVC_RECON_METRICS_PORT = envint("SVC_RECON_METRICS_PORT", 0)
SVC_MAX_ATTEMPTS = envint("SVC_MAX_ATTEMPTS", 3)
SVC_RECON_QUEUED_GRACE = envint("SVC_RECON_QUEUED_GRACE", 30)
SVC_RECON_HOLD_GRACE = envint("SVC_RECON_HOLD_GRACE", 60)
# Name of the RQ queue requests go to when their handler names no resource queue.
SVC_DEFAULT_QUEUE = envstr("SVC_DEFAULT_QUEUE", "svc-default")
# Python modules of handlers installed beside executor/handlers (comma-separated dotted paths,
# e.g. "acme_handlers.vision"): imported at start-up by every process, their @handler
# functions join the registry. The API, the executor and recon must list the same modules.
SVC_HANDLER_MODULES = envlist("SVC_HANDLER_MODULES")
# Seconds without a liveness beat after which an executor counts as dead (at least 2; the
# executors and recon must agree on it). Lower means faster recovery and more false deaths of
# a process frozen for a moment (a long GC pause, a swapped-out host).
SVC_EXECUTOR_DEAD_AFTER = float(max(envint("SVC_EXECUTOR_DEAD_AFTER", 20), 2))
# Another resource map file than configs/resource_map.yaml (it then wins over the config's).
SVC_RESOURCE_MAP = envoptional("SVC_RESOURCE_MAP")
# Configs (configs/): the bootstrap file (default: the shipped configs/config.yaml) and the
# seconds a process serves its copy of a config before it looks for a newer version.
SVC_CONFIG_BOOTSTRAP = envoptional("SVC_CONFIG_BOOTSTRAP")
SVC_CONFIG_REFRESH_SECONDS = envfloat("SVC_CONFIG_REFRESH_SECONDS", 5.0)
# openai.chat: the base URL when neither the offer nor the service_map config gives one, and
# the `*_API_KEY` variables an offer's `params.api_key_env` may name (only those).
OPENAI_BASE_URL = envoptional("OPENAI_BASE_URL")
UPSTREAM_API_KEYS = envmatching("_API_KEY")

# Webhooks (webhooks/, docs/api.md "Webhooks"): a webhook URL must be https and resolve to
# public addresses only; SVC_WEBHOOK_ALLOW_PRIVATE=1 (development and tests) also takes http
# and private, loopback and link-local addresses. Each attempt waits SVC_WEBHOOK_TIMEOUT
# seconds at most; failed ones are retried after the delays of SVC_WEBHOOK_RETRY_SCHEDULE
# (seconds, comma-separated; default Svix's 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, with jitter).
SVC_WEBHOOK_ALLOW_PRIVATE = envbool("SVC_WEBHOOK_ALLOW_PRIVATE", False)
SVC_WEBHOOK_TIMEOUT = envfloat("SVC_WEBHOOK_TIMEOUT", 15.0)
SVC_WEBHOOK_RETRY_SCHEDULE = [
    float(delay)
    for delay in envlist("SVC_WEBHOOK_RETRY_SCHEDULE") or [5, 300, 1800, 7200, 18000, 36000]
]
# Days an ended webhook delivery (delivered, failed, stopped) and its attempts are kept, for
# the admin and redelivery; the webhook worker deletes older ones (at most once an hour).
SVC_WEBHOOK_KEEP_DAYS = envint("SVC_WEBHOOK_KEEP_DAYS", 30)
# Seconds an `Idempotency-Key` and its answer are kept (Stripe: 24 h).
SVC_IDEMPOTENCY_TTL = envint("SVC_IDEMPOTENCY_TTL", 86400)
# `Prefer: wait=N`: the longest wait a client may ask for, in seconds.
SVC_MAX_WAIT_SECONDS = envint("SVC_MAX_WAIT_SECONDS", 60)
# Live answers (SSE streams, WebSocket subscriptions) one client may hold open at once on one
# API process (429 too_many_streams past it); each one opened also counts against
# SVC_READ_RATE.
SVC_LIVE_PER_CLIENT = envint("SVC_LIVE_PER_CLIENT", 1000)
# Seconds between an SSE stream's keep-alive comments (and its looks at the document).
SVC_SSE_KEEPALIVE_SECONDS = envfloat("SVC_SSE_KEEPALIVE_SECONDS", 15.0)
# Liveness port of the processes that serve no HTTP (executor, recon, webhook worker:
# infra/probe.py): `GET /livez` on SVC_PROBE_ADDR:SVC_PROBE_PORT (0: off), 503 once the
# process's loop has not gone round for SVC_PROBE_STALE_SECONDS.
SVC_PROBE_PORT = envint("SVC_PROBE_PORT", 0)
SVC_PROBE_ADDR = envstr("SVC_PROBE_ADDR", "0.0.0.0")
SVC_PROBE_STALE_SECONDS = envfloat("SVC_PROBE_STALE_SECONDS", 60.0)
# The address recon serves its metrics on (SVC_RECON_METRICS_PORT): loopback unless a scraper
# from elsewhere needs them (a pod: 0.0.0.0).
SVC_RECON_METRICS_ADDR = envstr("SVC_RECON_METRICS_ADDR", "127.0.0.1")
# The gateway (/v1/chat/completions, api/chat.py): max_tokens when neither the client nor the
# offer's params say (the hold counts the output at it), the most messages and choices (`n`)
# a call may ask for.
SVC_CHAT_MAX_TOKENS = envint("SVC_CHAT_MAX_TOKENS", 4096)
SVC_CHAT_MAX_MESSAGES = envint("SVC_CHAT_MAX_MESSAGES", 2048)
SVC_CHAT_MAX_N = envint("SVC_CHAT_MAX_N", 8)

# Recon's health (api/health.py): the error rate counts requests that ended within this many
# minutes. Alerts (recon/alerts.py): a queued request older than SVC_ALERT_STUCK_SECONDS, or an
# error rate above SVC_ALERT_ERROR_RATE (a fraction, over at least 10 ended requests), fires;
# a condition still firing is sent again every SVC_ALERT_REPEAT_MINUTES. A queue without a live
# executor fires once its oldest request waited SVC_ALERT_NO_EXECUTOR_SECONDS (a deploy's
# restart or a stack starting up is not an outage).
SVC_HEALTH_ERROR_MINUTES = envint("SVC_HEALTH_ERROR_MINUTES", 5)
SVC_ALERT_STUCK_SECONDS = envint("SVC_ALERT_STUCK_SECONDS", 300)
SVC_ALERT_NO_EXECUTOR_SECONDS = envint("SVC_ALERT_NO_EXECUTOR_SECONDS", 60)
SVC_ALERT_REPEAT_MINUTES = envint("SVC_ALERT_REPEAT_MINUTES", 30)
SVC_ALERT_ERROR_RATE = envfloat("SVC_ALERT_ERROR_RATE", 0.5)
# Where alerts go; either may be unset (then that kind is not sent). Both URLs hold tokens:
# never log them.
DISCORD_WEBHOOK_URL = envoptional("DISCORD_WEBHOOK_URL")
SVC_ALERT_WEBHOOK_URL = envoptional("SVC_ALERT_WEBHOOK_URL")

# Operators and the admin login (README, "Operators and roles").
# Reverse proxies in front of the API that append the address they saw to X-Forwarded-For
# (infra/client_ip.py): 0 uses the connection's address; more than there really are would let
# a client pick its own address.
SVC_PROXY_COUNT = envint("SVC_PROXY_COUNT", 0)
# Wrong passwords one username may try from one address before that pair is locked out
# (django-axes; a successful login resets the count), and the minutes a lockout lasts.
SVC_ADMIN_LOGIN_FAILURES = envint("SVC_ADMIN_LOGIN_FAILURES", 5)
SVC_ADMIN_LOGIN_LOCKOUT_MINUTES = envint("SVC_ADMIN_LOGIN_LOCKOUT_MINUTES", 15)
# Admin login attempts one address may make (DRF rate syntax), counted in Redis; more answer
# 429 before any password is hashed (marketplace/login_guard.py).
SVC_ADMIN_LOGIN_RATE = envstr("SVC_ADMIN_LOGIN_RATE", "10/min")
# Password checks (~0.5 s of a CPU each) the whole deployment runs at once; a login arriving
# while they are all taken answers 429, so a flood of logins cannot starve the API of CPU.
SVC_ADMIN_LOGIN_CONCURRENCY = max(envint("SVC_ADMIN_LOGIN_CONCURRENCY", 2), 1)
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: a locked-out pair is refused unhashed
    "django.contrib.auth.backends.ModelBackend",
]
# django-axes (in SQL: operators see and delete lockouts under "Access attempts"): a pair is
# the lockout's key, its address is infra/client_ip's, an attempt while locked renews the
# lockout, and the answer is the admin's login page saying so, as a 429 (login_guard.refused).
AXES_FAILURE_LIMIT = SVC_ADMIN_LOGIN_FAILURES
AXES_COOLOFF_TIME = timedelta(minutes=SVC_ADMIN_LOGIN_LOCKOUT_MINUTES)
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "infra.client_ip.client_ip"
AXES_LOCKOUT_CALLABLE = "marketplace.login_guard.lockout_response"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["api.http.authentication.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "api.http.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# Logs (infra/logs.py): JSON lines (LOG_FORMAT=json, the default) or plain text on the
# console; with FLUENTD_HOST set, the same records also go to Fluentd (forward protocol, tag
# `<FLUENTD_TAG>.<role>`). Every record carries the request context and has secrets redacted.
LOG_FORMAT = envstr("LOG_FORMAT", "json")
FLUENTD_HOST = envoptional("FLUENTD_HOST")
FLUENTD_PORT = envint("FLUENTD_PORT", 24224)
FLUENTD_TAG = envstr("FLUENTD_TAG", "svc")
try:
    LOGGING = logs.logging_config(
        log_format=LOG_FORMAT,
        level=envstr("LOG_LEVEL", "INFO").upper(),
        fluentd_host=FLUENTD_HOST,
        fluentd_port=FLUENTD_PORT,
        fluentd_tag=FLUENTD_TAG,
    )
except ValueError as exc:
    raise ImproperlyConfigured(str(exc)) from None
logs.register_env_secrets(os.environ)

# Metrics: with PROMETHEUS_MULTIPROC_DIR set (`make run` sets it), every process on the host
# (gunicorn workers, executors, recon) writes its metrics there and the API's /metrics serves
# them all (infra/metrics.py); without it, each process serves only its own.
PROMETHEUS_MULTIPROC_DIR = envoptional("PROMETHEUS_MULTIPROC_DIR")
# Whether /metrics drops the live gauges of processes that no longer exist (killed with -9).
# Turn it off when processes of different PID namespaces share the directory.
SVC_METRICS_PRUNE_DEAD = envbool("SVC_METRICS_PRUNE_DEAD", True)
# Who may read /metrics and /healthz?detail=1 (infra/metrics.py): a caller that sends
# `Authorization: Bearer <SVC_METRICS_TOKEN>`, or one whose address (REMOTE_ADDR: behind a
# proxy, the proxy's) is in SVC_METRICS_TRUSTED_NETWORKS (CIDRs, comma-separated). Neither set:
# nobody (/metrics answers 403, /healthz leaves the detail out). `make run` makes a token.
SVC_METRICS_TOKEN = envoptional("SVC_METRICS_TOKEN")
SVC_METRICS_TRUSTED_NETWORKS = envnetworks("SVC_METRICS_TRUSTED_NETWORKS")

# The OpenAPI 3.1 document (`/api/schema/`) and Swagger UI (`/api/docs/`): api/http/openapi.py
# writes the operations (the views answer plain dicts, which drf-spectacular cannot read) and
# serves the document, cached per catalog version. Swagger UI's scripts and styles come from
# drf-spectacular-sidecar, from this origin (the CSP above allows no other): an app, so that
# collectstatic finds them.
INSTALLED_APPS += ["drf_spectacular_sidecar"]
SPECTACULAR_SETTINGS = {
    "TITLE": "AI service marketplace API",
    "DESCRIPTION": "Offers and deals bought with credits: one operation per offer and deal on "
    "sale, with its inputs and price. Authenticate with `Authorization: Bearer <API key>`.",
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "PREPROCESSING_HOOKS": ["api.http.openapi.leave_described_endpoints"],
    "POSTPROCESSING_HOOKS": ["api.http.openapi.describe_api"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "displayOperationId": True},
    # Not in `check --deploy`: the document reads the catalog, and the check runs before
    # `migrate`; tests/api/test_openapi.py validates it instead.
    "ENABLE_DJANGO_DEPLOY_CHECK": False,
}

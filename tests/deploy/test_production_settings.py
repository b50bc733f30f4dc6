"""Production settings (marketplace/settings.py, SVC_ENVIRONMENT=production, the default):
`check --deploy` finds nothing, a missing DJANGO_ALLOWED_HOSTS or DEBUG on is refused in one
line, the answers carry the security headers, and every admin page works under the
Content-Security-Policy (no inline script or style it needs)."""

import json
import os
import re
import secrets
from pathlib import Path

import pytest
from django.contrib import admin
from django.urls import NoReverseMatch, reverse

from configs import store as config_store
from tests.helpers import manage_command, run_worker, submit

ROOT = Path(__file__).resolve().parents[2]
HOST = "api.example.com"
# What `check --deploy` takes for a strong key: 50 characters, many different ones.
SECRET_KEY = secrets.token_urlsafe(64)[:50]


def production_env(data_dir: Path, **overrides: str | None) -> dict[str, str]:
    """A production process's whole environment (nothing inherited from the test session but
    PATH and the stores); an override of None leaves that variable out."""
    (data_dir / "static").mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "SVC_ENVIRONMENT": "production",
        "DJANGO_DEBUG": "0",
        "DJANGO_ALLOWED_HOSTS": HOST,
        "DJANGO_SECRET_KEY": SECRET_KEY,
        "MONGO_URI": os.environ["MONGO_URI"],
        "REDIS_URL": os.environ["REDIS_URL"],
        "DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
        **overrides,
    }
    return {name: value for name, value in env.items() if value is not None}


def test_check_deploy_finds_nothing_in_production(tmp_path):
    result = manage_command(
        production_env(tmp_path), "check", "--deploy", "--fail-level", "WARNING"
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "System check identified no issues" in result.stdout, output
    assert "WARNING" not in output and "security.W" not in output, output


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            {"DJANGO_ALLOWED_HOSTS": None},
            "manage.py: DJANGO_ALLOWED_HOSTS is not set: name the host names this API answers "
            "to, e.g. DJANGO_ALLOWED_HOSTS=api.example.com (or, on a development machine, set "
            "SVC_ENVIRONMENT=development).",
        ),
        (  # production is the default
            {"DJANGO_ALLOWED_HOSTS": None, "SVC_ENVIRONMENT": None},
            "manage.py: DJANGO_ALLOWED_HOSTS is not set",
        ),
        (
            {"DJANGO_DEBUG": "1"},
            "manage.py: DJANGO_DEBUG is on in production: unset it (or, on a development "
            "machine, set SVC_ENVIRONMENT=development).",
        ),
        (
            {"SVC_ENVIRONMENT": "staging"},
            "manage.py: SVC_ENVIRONMENT must be production or development, not 'staging'",
        ),
    ],
)
def test_production_refuses_to_start_misconfigured_in_one_line(tmp_path, overrides, message):
    result = manage_command(production_env(tmp_path, **overrides), "check")
    assert result.returncode != 0
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith(message), result.stderr


# Run by `manage.py shell -c` in a production process: Django's test client asks for a few
# pages and prints what came back, as JSON.
HEADERS_PROBE = """
import json
from django.test import Client

def ask(path, headers=(), **options):
    headers = {"host": "api.example.com", **dict(headers)}
    response = Client().get(path, headers=headers, **options)
    cookie = response.cookies.get("csrftoken")
    return {
        "status": response.status_code,
        "headers": dict(response.headers),
        "csrf_cookie_secure": bool(cookie and cookie["secure"]),
    }

print(json.dumps({
    "secure": ask("/admin/login/", secure=True),
    "plain": ask("/admin/login/"),
    "proxied": ask("/admin/login/", headers={"x-forwarded-proto": "https"}),
    "healthz": ask("/healthz"),
}))
"""


def csp_directives(header: str) -> dict[str, list[str]]:
    return {
        name: sources
        for name, *sources in (part.split() for part in header.split(";") if part.strip())
    }


def test_the_admin_login_page_carries_the_security_headers(tmp_path):
    env = production_env(tmp_path, SVC_PROXY_SSL_HEADER="X-Forwarded-Proto")
    result = manage_command(env, "shell", "-c", HEADERS_PROBE)
    assert result.returncode == 0, result.stderr
    pages = json.loads(result.stdout.strip().splitlines()[-1])

    secure = pages["secure"]
    assert secure["status"] == 200
    headers = secure["headers"]
    assert csp_directives(headers["Content-Security-Policy"]) == {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "img-src": ["'self'", "data:"],
        "frame-ancestors": ["'none'"],
        "form-action": ["'self'"],
        "base-uri": ["'self'"],
    }
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "same-origin"
    assert secure["csrf_cookie_secure"]
    # Plain HTTP is sent to HTTPS; behind the proxy its header makes the request secure.
    assert pages["plain"]["status"] == 301
    assert pages["plain"]["headers"]["Location"] == f"https://{HOST}/admin/login/"
    assert pages["proxied"]["status"] == 200
    assert "Strict-Transport-Security" in pages["proxied"]["headers"]
    # Load balancers call /healthz on the API servers directly, over plain HTTP.
    assert pages["healthz"]["status"] in (200, 503)


# --- the admin under the Content-Security-Policy ------------------------------------------

# What `script-src 'self'` and `style-src 'self'` refuse: inline scripts (a data block such as
# json_script's is not run, so allowed), style elements and attributes, event handler
# attributes, javascript: URLs.
TAG = re.compile(r"<([a-zA-Z][a-zA-Z0-9-]*)\b([^>]*)>")
REFUSED_ATTRIBUTE = re.compile(r"""\s(style|on[a-z]+)\s*=|=\s*["']?\s*javascript:""", re.I)


def refused_by_csp(html: str) -> list[str]:
    return [match[0] for match in TAG.finditer(html) if _refused(match[1].lower(), match[2])]


def _refused(name: str, attributes: str) -> bool:
    if name == "style" or REFUSED_ATTRIBUTE.search(attributes):
        return True
    return name == "script" and "src=" not in attributes and "application/json" not in attributes


def admin_pages() -> list[str]:
    """Every registered model's list and add pages (a page a model admin offers)."""
    pages = ["/admin/"]
    for model in admin.site._registry:
        for view in ("changelist", "add"):
            try:
                pages.append(
                    reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{view}")
                )
            except NoReverseMatch:
                continue
    return pages


@pytest.fixture
def fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def test_every_admin_page_works_under_the_csp(
    fast_password_hashing, admin_client, client, alice_api, greet_offer, fresh_fernet_key
):
    # Data the pages show: a usage record (the per-resource totals), two config versions.
    submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    run_worker()
    config_store.upload("probe", "model: one\n~api_key: sk-one\n", by="ada")
    config_store.upload("probe", "model: two\n~api_key: sk-two\n", by="ada")
    pages = admin_pages() + [
        reverse("admin:configs_configversion_config", args=["probe"]),
        reverse("admin:configs_configversion_version", args=["probe", 1]),
        reverse("admin:configs_configversion_diff", args=["probe", 1, 2]),
        reverse("admin:api_serviceoffer_change", args=[greet_offer.pk]),
    ]
    assert len(pages) > 10
    for page in pages:
        response = admin_client.get(page)
        if response.status_code == 403:  # a read-only model's add page
            continue
        assert response.status_code == 200, page
        assert "script-src 'self'" in response["Content-Security-Policy"], page
        assert refused_by_csp(response.content.decode()) == [], page
    login = client.get("/admin/login/")
    assert login.status_code == 200 and refused_by_csp(login.content.decode()) == []


def test_the_csp_check_finds_inline_code():
    """The check above can fail."""
    assert refused_by_csp('<div style="color: red">') == ['<div style="color: red">']
    assert refused_by_csp("<script>alert(1)</script>") == ["<script>"]
    assert refused_by_csp('<a href="javascript:go()">') != []
    assert refused_by_csp('<button onclick="go()">') != []
    assert refused_by_csp('<script src="/static/x.js"></script><p class="s">') == []

"""Running code follows the active config versions: API settings, handler keys, resource limits."""

import io
import textwrap
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.management import call_command
from django.test import override_settings

from configs import keys, live
from executor import resources
from tests.helpers import error_code, run_worker, submit

SERVICE_MAP = """\
resource_map:
  resources:
    local: {{max_concurrency: {limit}}}
handlers:
  openai.chat:
    ~api_key: {key}
    base_url: {base_url}
"""


@pytest.fixture(autouse=True)
def fernet_key(monkeypatch, settings):
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(keys.KEY_ENV, key)
    settings.SVC_RESOURCE_MAP = ""
    return key


def upload(tmp_path: Path, name: str, text: str, forget: bool = True) -> None:
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(text))
    call_command("config", "upload", str(path), "--name", name, stdout=io.StringIO())
    if forget:
        live.forget()  # as if REFRESH_SECONDS had passed


@override_settings(SVC_INTAKE_RATE="1000/min")
def test_the_intake_rate_follows_the_api_config(tmp_path, alice_api, greet_offer):
    body = {"name": "Ada", "place": "P"}
    assert submit(alice_api, "/svc/text/greet/", body)["status"] == "queued"
    upload(tmp_path, "api", "intake_rate: 2/min\n")
    codes = [
        alice_api.post("/svc/text/greet/", {**body, "name": str(i)}, format="json").status_code
        for i in range(3)
    ]
    assert codes == [202, 429, 429]  # the first POST counts: 2 in the window
    upload(tmp_path, "api", "intake_rate: 100/min\n")
    assert (
        alice_api.post("/svc/text/greet/", {**body, "name": "x"}, format="json").status_code == 202
    )


def test_the_body_limit_follows_the_api_config(tmp_path, alice_api, greet_offer):
    upload(tmp_path, "api", "max_body_bytes: 40\n")
    response = alice_api.post("/svc/text/greet/", {"name": "A" * 50, "place": "P"}, format="json")
    assert response.status_code == 413 and error_code(response) == "payload_too_large"


def test_openai_chat_takes_its_key_and_base_url_from_the_service_map(
    tmp_path, alice_api, make_offer, openai_stub, settings
):
    settings.UPSTREAM_API_KEYS = {}
    settings.OPENAI_BASE_URL = ""
    upload(
        tmp_path,
        "service_map",
        SERVICE_MAP.format(limit="null", key=openai_stub.api_key, base_url=openai_stub.url + "/v1"),
    )
    make_offer("chat", "complete", handler="openai.chat", params={"model": "m"})
    created = submit(alice_api, "/svc/chat/complete/", {"x": "hi"})
    run_worker()
    done = alice_api.get(created["url"]).json()
    assert done["status"] == "succeeded", done
    assert done["results"] == ["echo: hi"]
    assert openai_stub.requests[-1].headers["Authorization"] == f"Bearer {openai_stub.api_key}"


def test_the_resource_map_follows_the_service_map(tmp_path):
    assert resources.get_resource("local").max_concurrency is None  # the shipped map
    upload(tmp_path, "service_map", SERVICE_MAP.format(limit=2, key="k", base_url="http://x"))
    assert resources.get_resource("local").max_concurrency == 2
    upload(tmp_path, "service_map", SERVICE_MAP.format(limit=7, key="k", base_url="http://x"))
    assert resources.get_resource("local").max_concurrency == 7
    call_command("config", "rollback", "service_map", stdout=io.StringIO())
    live.forget()
    assert resources.get_resource("local").max_concurrency == 2


def test_a_config_without_secrets_needs_no_key(tmp_path, monkeypatch):
    upload(tmp_path, "api", "intake_rate: 5/min\n")
    monkeypatch.delenv(keys.KEY_ENV)
    live.forget()
    assert live.config("api") == {"intake_rate": "5/min"}


def test_a_version_that_cannot_be_decrypted_keeps_the_last_good_one(
    tmp_path, monkeypatch, fernet_key
):
    upload(tmp_path, "service_map", SERVICE_MAP.format(limit=3, key="k1", base_url="http://x"))
    assert live.section("service_map", "handlers", "openai.chat")["api_key"] == "k1"
    monkeypatch.setenv(keys.KEY_ENV, Fernet.generate_key().decode())  # uploaded with another key
    text = SERVICE_MAP.format(limit=4, key="k2", base_url="http://x")
    upload(tmp_path, "service_map", text, forget=False)
    monkeypatch.setenv(keys.KEY_ENV, fernet_key)  # this process cannot read version 2
    live._entries["service_map"].checked_at = 0  # due for a refresh
    assert live.section("service_map", "handlers", "openai.chat")["api_key"] == "k1"
    assert resources.get_resource("local").max_concurrency == 3

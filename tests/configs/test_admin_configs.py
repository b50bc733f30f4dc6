"""The read-only admin pages of configs (configs/admin.py): staff only, secrets always masked."""

import re

import pytest
from cryptography.fernet import Fernet
from django.contrib.auth.models import Permission
from django.urls import NoReverseMatch, reverse

from configs import keys, protocol, store

pytestmark = pytest.mark.django_db

CANARY = "sk-canary-admin-5d1e9b"  # a secret value: must never reach a page
OTHER_CANARY = "sk-canary-admin-other-77c2"
DEEP_CANARY = "deep-canary-admin-31f0"

PAYMENTS = """\
base_url: https://pay.example/v1
model: MODEL
~api_key: SECRET
gateway:
  ~credentials: {user: ops, password: DEEP}
"""


def payments(model: str = "small", secret: str = CANARY) -> str:
    return PAYMENTS.replace("MODEL", model).replace("SECRET", secret).replace("DEEP", DEEP_CANARY)


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # admin_client's superuser gets a password; the default hasher costs half a second.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def fernet_key(monkeypatch) -> str:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(keys.KEY_ENV, key)
    return key


@pytest.fixture
def two_versions():
    """payments 1 and 2 (2 active): the model and the api key's value differ."""
    store.upload("payments", payments("one"), by="ada", comment="first")
    store.upload("payments", payments("two", OTHER_CANARY), by="grace", comment="new key")


@pytest.fixture
def operator(django_user_model):
    user = django_user_model.objects.create_user("operator", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_configversion"))
    return user


@pytest.fixture
def operator_client(client, operator):
    client.force_login(operator)
    return client


def url(page: str, *args) -> str:
    return reverse(f"admin:configs_configversion_{page}", args=args)


PAGES = [
    ("changelist",),
    ("config", "payments"),
    ("version", "payments", 1),
    ("version", "payments", 2),
    ("diff", "payments", 1, 2),
]


def html(client, address: str) -> str:
    response = client.get(address)
    assert response.status_code == 200, address
    return response.content.decode()


@pytest.mark.parametrize("page", PAGES)
def test_the_pages_load_for_an_operator_allowed_to_view_configs(
    operator_client, two_versions, page
):
    assert operator_client.get(url(*page)).status_code == 200


@pytest.mark.parametrize("page", PAGES)
def test_anonymous_users_are_sent_to_the_login_page(client, two_versions, page):
    response = client.get(url(*page))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("admin:login"))


def test_staff_without_the_view_permission_are_refused(client, django_user_model, two_versions):
    client.force_login(django_user_model.objects.create_user("bob", is_staff=True))
    assert client.get(url("changelist")).status_code == 403
    assert client.get(url("version", "payments", 1)).status_code == 403


def test_the_admin_index_links_to_the_configs_without_an_add_link(admin_client):
    page = html(admin_client, reverse("admin:index"))
    assert f'href="{url("changelist")}"' in page
    assert "Config versions" in page
    assert f"{url('changelist')}add/" not in page
    assert url("changelist") in html(admin_client, reverse("admin:app_list", args=["configs"]))


@pytest.mark.parametrize("page", ["add", "change", "delete", "history"])
def test_there_are_no_pages_that_change_configs(admin_client, two_versions, page):
    args = [] if page == "add" else ["payments"]
    with pytest.raises(NoReverseMatch):
        reverse(f"admin:configs_configversion_{page}", args=args)
    # The add page's address is a config's page; there is no config named "add".
    assert admin_client.get(f"{url('changelist')}add/").status_code == 404


def test_no_page_shows_a_secret_even_to_a_superuser(admin_client, two_versions):
    tokens = []  # the ciphertexts: not shown either
    for number in (1, 2):
        content = store.get("payments", number).content
        tokens += [content["~api_key"], content["gateway"]["~credentials"]]
    pages = {page: html(admin_client, url(*page)) for page in PAGES}

    for page in pages.values():
        for plaintext in (CANARY, OTHER_CANARY, DEEP_CANARY):
            assert plaintext not in page
        for token in tokens:
            assert token[protocol.SEALED_KEY] not in page
        assert protocol.SEALED_KEY not in page
    version_page = pages[("version", "payments", 1)]
    assert "~api_key: &#x27;********&#x27;" in version_page
    assert "~credentials: &#x27;********&#x27;" in version_page
    assert "model: one" in version_page
    diff_page = pages[("diff", "payments", 1, 2)]
    assert "+~api_key: &#x27;******** (changed)&#x27;" in diff_page
    assert "-model: one" in diff_page and "+model: two" in diff_page


def test_a_version_shows_masked_without_the_key(admin_client, two_versions, monkeypatch):
    # Masking needs no key, which shows that the page never decrypts.
    monkeypatch.delenv(keys.KEY_ENV)
    assert "~api_key: &#x27;********&#x27;" in html(admin_client, url("version", "payments", 2))


def test_a_diff_needing_the_key_says_so_instead_of_failing(admin_client, two_versions, monkeypatch):
    monkeypatch.delenv(keys.KEY_ENV)
    page = html(admin_client, url("diff", "payments", 1, 2))
    assert "Cannot compare: CONFIG_FERNET_KEY is not set" in page


def test_a_diff_of_a_version_with_itself_says_the_content_is_the_same(admin_client, two_versions):
    page = html(admin_client, url("diff", "payments", 2, 2))
    assert "Versions 2 and 2 have the same content." in page


def test_the_list_shows_each_config_with_its_active_and_latest_version(admin_client, two_versions):
    store.upload("api", "max_body_bytes: 1000\n", by="ada")
    response = admin_client.get(url("changelist"))
    rows = [
        (row["name"], row["active"], row["count"], row["latest"].version, row["latest"].created_by)
        for row in response.context["configs"]
    ]
    assert rows == [("api", 1, 1, 1, "ada"), ("payments", 2, 2, 2, "grace")]
    assert "new key" in response.content.decode()


def test_the_active_marker_follows_a_rollback(admin_client, two_versions):
    store.rollback("payments", by="ops", comment="bad key")

    response = admin_client.get(url("config", "payments"))

    versions = [(row["v"].version, row["is_active"]) for row in response.context["versions"]]
    assert versions == [(2, False), (1, True)]
    active_row = r'<tr class="version active">\s*<td><a [^>]*>(\d+)</a>'
    assert re.findall(active_row, response.content.decode()) == ["1"]
    events = [(e["action"], e["version"], e["by"]) for e in response.context["events"]]
    assert events[0] == ("rollback", 1, "ops")
    assert [action for action, _, _ in events] == [
        "rollback",
        "activate",
        "upload",
        "activate",
        "upload",
    ]
    assert admin_client.get(url("changelist")).context["configs"][0]["active"] == 1
    assert "not active (version 1 is)" in html(admin_client, url("version", "payments", 2))


@pytest.mark.parametrize(
    "page",
    [
        ("config", "nope"),
        ("version", "nope", 1),
        ("version", "payments", 3),
        ("diff", "nope", 1, 2),
        ("diff", "payments", 1, 9),
    ],
)
def test_an_unknown_config_or_version_is_a_404_page(admin_client, two_versions, page):
    response = admin_client.get(url(*page))
    assert response.status_code == 404
    assert "errornote" in response.content.decode()
    assert response.context["name"] == page[1]


def test_the_list_says_when_there_are_no_configs(admin_client):
    assert "No configs are stored yet" in html(admin_client, url("changelist"))

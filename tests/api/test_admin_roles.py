"""Who may open which admin page: every page of every registered model, the admin's own pages
and the custom ones, for each persona, against one table (README, "Operators and roles").

The pages are found, not listed: each URL a registered ModelAdmin serves (changelist, add,
change, delete, history, and custom ones such as a user's password form or the configs' pages),
so a model or page added to the admin without a row here fails the first test.
"""

import importlib
from types import SimpleNamespace

import pytest
from auditlog.models import LogEntry
from axes.models import AccessAttempt, AccessFailureLog, AccessLog
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db import connection
from django.db.migrations.loader import MigrationLoader
from django.test import Client
from django.urls import reverse

from api.keys import ApiKey
from api.models import LedgerEntry, ServiceDeal, ServiceDealItem, UsageRecord
from api.services.keys import key_issue
from configs import store
from webhooks.models import WebhookDelivery, WebhookSettings

pytestmark = pytest.mark.django_db

PERSONAS = ["anonymous", "client", "support", "finance", "catalog_editor", "operator"]

# Expected status of each page for each persona. Anonymous users and clients (non-staff) are
# sent to the login page (302) everywhere; 403: staff without the permission; 404: an app
# index listing nothing the persona may see.
EXPECTED = """
page                                   anonymous client support finance catalog_editor operator
index                                  302       302    200     200     200            200
password_change                        302       302    200     200     200            200
app api                                302       302    200     200     200            200
app auth                               302       302    200     404     404            200
app auditlog                           302       302    200     404     404            200
app axes                               302       302    200     404     404            200
app webhooks                           302       302    200     404     404            200
app configs                            302       302    200     404     404            200
app recon                              302       302    200     200     404            200
auth.group changelist                  302       302    200     403     403            200
auth.group add                         302       302    403     403     403            200
auth.group change                      302       302    200     403     403            200
auth.group delete                      302       302    403     403     403            200
auth.group history                     302       302    200     403     403            200
auth.user changelist                   302       302    200     403     403            200
auth.user add                          302       302    403     403     403            200
auth.user change                       302       302    200     403     403            200
auth.user delete                       302       302    403     403     403            200
auth.user history                      302       302    200     403     403            200
auth.user password_change              302       302    403     403     403            200
api.account changelist                 302       302    200     200     403            200
api.account add                        302       302    403     403     403            403
api.account change                     302       302    200     200     403            200
api.account delete                     302       302    403     403     403            403
api.account history                    302       302    200     200     403            200
api.ledgerentry changelist             302       302    200     200     403            200
api.ledgerentry add                    302       302    403     403     403            403
api.ledgerentry change                 302       302    200     200     403            200
api.ledgerentry delete                 302       302    403     403     403            403
api.ledgerentry history                302       302    200     200     403            200
api.usagerecord changelist             302       302    200     200     403            200
api.usagerecord add                    302       302    403     403     403            403
api.usagerecord change                 302       302    200     200     403            200
api.usagerecord delete                 302       302    403     403     403            403
api.usagerecord history                302       302    200     200     403            200
api.apikey changelist                  302       302    200     200     403            200
api.apikey add                         302       302    403     200     403            200
api.apikey change                      302       302    200     200     403            200
api.apikey delete                      302       302    403     403     403            403
api.apikey history                     302       302    200     200     403            200
api.servicehandler changelist          302       302    200     403     200            200
api.servicehandler add                 302       302    403     403     200            200
api.servicehandler change              302       302    200     403     200            200
api.servicehandler delete              302       302    403     403     200            200
api.servicehandler history             302       302    200     403     200            200
api.serviceoffer changelist            302       302    200     403     200            200
api.serviceoffer add                   302       302    403     403     200            200
api.serviceoffer change                302       302    200     403     200            200
api.serviceoffer delete                302       302    403     403     200            200
api.serviceoffer history               302       302    200     403     200            200
api.servicedeal changelist             302       302    200     403     200            200
api.servicedeal add                    302       302    403     403     200            200
api.servicedeal change                 302       302    200     403     200            200
api.servicedeal delete                 302       302    403     403     200            200
api.servicedeal history                302       302    200     403     200            200
api.circuitbreaker changelist          302       302    200     403     200            200
recon.usagehour changelist             302       302    200     200     403            200
configs.configversion changelist       302       302    200     403     403            200
configs.configversion config           302       302    200     403     403            200
configs.configversion version          302       302    200     403     403            200
configs.configversion diff             302       302    200     403     403            200
auditlog.logentry changelist           302       302    200     403     403            200
auditlog.logentry add                  302       302    403     403     403            403
auditlog.logentry change               302       302    200     403     403            200
auditlog.logentry delete               302       302    403     403     403            403
auditlog.logentry history              302       302    200     403     403            200
axes.accessattempt changelist          302       302    200     403     403            200
axes.accessattempt add                 302       302    403     403     403            403
axes.accessattempt change              302       302    200     403     403            200
axes.accessattempt delete              302       302    403     403     403            200
axes.accessattempt history             302       302    200     403     403            200
axes.accesslog changelist              302       302    200     403     403            200
axes.accesslog add                     302       302    403     403     403            403
axes.accesslog change                  302       302    200     403     403            200
axes.accesslog delete                  302       302    403     403     403            200
axes.accesslog history                 302       302    200     403     403            200
axes.accessfailurelog changelist       302       302    200     403     403            200
axes.accessfailurelog add              302       302    403     403     403            403
axes.accessfailurelog change           302       302    200     403     403            200
axes.accessfailurelog delete           302       302    403     403     403            200
axes.accessfailurelog history          302       302    200     403     403            200
webhooks.webhookdelivery changelist    302       302    200     403     403            200
webhooks.webhookdelivery add           302       302    403     403     403            403
webhooks.webhookdelivery change        302       302    200     403     403            200
webhooks.webhookdelivery delete        302       302    403     403     403            403
webhooks.webhookdelivery history       302       302    200     403     403            200
webhooks.webhooksettings changelist    302       302    200     403     403            200
webhooks.webhooksettings add           302       302    403     403     403            403
webhooks.webhooksettings change        302       302    200     403     403            200
webhooks.webhooksettings delete        302       302    403     403     403            403
webhooks.webhooksettings history       302       302    200     403     403            200
"""

# Whether an admin action takes effect for each persona (a refused one leaves data as it was).
ACTIONS = """
action        anonymous client support finance catalog_editor operator
grant_credits no        no     no      yes     no             yes
revoke_keys   no        no     no      yes     no             yes
"""

CONFIG_SECRET = "sk-canary-roles-4b7e"
FERNET_TOKEN_START = "gAAAAA"  # how every Fernet token (an encrypted `~` value) begins
PAYMENTS = "base_url: https://pay.example/v1\nmodel: MODEL\n~api_key: SECRET\n"


def table(text: str, cast) -> dict[str, dict[str, object]]:
    header, *rows = [line.split() for line in text.strip().splitlines()]
    assert header[-len(PERSONAS) :] == PERSONAS, header
    n = len(PERSONAS)
    return {
        " ".join(row[:-n]): dict(zip(PERSONAS, map(cast, row[-n:]), strict=True)) for row in rows
    }


@pytest.fixture
def personas(alice, support, finance, catalog_editor, operator) -> dict[str, Client]:
    clients = {"anonymous": Client()}
    for name, user in [
        ("client", alice),
        ("support", support),
        ("finance", finance),
        ("catalog_editor", catalog_editor),
        ("operator", operator),
    ]:
        clients[name] = Client()
        clients[name].force_login(user)
    return clients


@pytest.fixture
def api_key(alice):
    return key_issue(key=ApiKey(user=alice, name="ci"))


@pytest.fixture
def admin_objects(alice, greet_offer, api_key, fresh_fernet_key) -> dict[str, object]:
    """One object of each registered model (for its change, delete and history pages)."""
    deal = ServiceDeal.objects.create(name="starter", price=5)
    ServiceDealItem.objects.create(deal=deal, offer=greet_offer)
    usage = UsageRecord.objects.create(
        request_id="r1",
        user=alice,
        service="text",
        action="greet",
        handler="local.echo",
        resource="local",
        status="succeeded",
        calls=1,
        credits=1,
        price=3,
    )
    access = {"user_agent": "test", "ip_address": "203.0.113.7", "username": "alice"}
    access |= {"http_accept": "*/*", "path_info": "/admin/login/"}
    store.upload("payments", config_text("one"), by="ada")
    store.upload("payments", config_text("two"), by="ada")
    return {
        "auth.group": Group.objects.get(name="support"),
        "auth.user": alice,
        "api.account": alice.account,
        "api.ledgerentry": LedgerEntry.objects.filter(user=alice).first(),
        "api.usagerecord": usage,
        "api.apikey": api_key.key,
        "api.servicehandler": greet_offer.handler,
        "api.serviceoffer": greet_offer,
        "api.servicedeal": deal,
        "auditlog.logentry": LogEntry.objects.first(),
        "axes.accessattempt": AccessAttempt.objects.create(
            get_data="", post_data="", failures_since_start=1, **access
        ),
        "axes.accesslog": AccessLog.objects.create(**access),
        "axes.accessfailurelog": AccessFailureLog.objects.create(**access),
        "webhooks.webhookdelivery": WebhookDelivery.objects.create(
            webhook_id="msg_00000000000000000000000000000000",
            user=alice,
            request_id="r1",
            event="completed",
            url="https://hooks.example.com/svc",
            payload="{}",
        ),
        "webhooks.webhooksettings": WebhookSettings.objects.create(user=alice),
    }


def config_text(model: str) -> str:
    return PAYMENTS.replace("MODEL", model).replace("SECRET", CONFIG_SECRET)


# Arguments of a model's pages by URL name suffix (other pages take none).
OBJECT_PAGES = {"change", "delete", "history", "password_change"}
CONFIG_PAGE_ARGS = {"config": ["payments"], "version": ["payments", 1], "diff": ["payments", 1, 2]}


def model_pages() -> dict[str, tuple[str, str]]:
    """Each URL of each registered ModelAdmin: "app.model suffix" → (URL name, suffix)."""
    pages = {}
    for model, model_admin in admin.site._registry.items():
        prefix = f"{model._meta.app_label}_{model._meta.model_name}_"
        for pattern in model_admin.get_urls():
            name = getattr(pattern, "name", None)
            if name and name.startswith(prefix):
                suffix = name.removeprefix(prefix)
                pages[f"{model._meta.label_lower} {suffix}"] = (name, suffix)
    return pages


def page_urls(objects: dict[str, object]) -> dict[str, str]:
    urls = {
        "index": reverse("admin:index"),
        "password_change": reverse("admin:password_change"),
    }
    for app_label in {model._meta.app_label for model in admin.site._registry}:
        urls[f"app {app_label}"] = reverse("admin:app_list", args=[app_label])
    for page, (name, suffix) in model_pages().items():
        label = page.split()[0]
        if suffix in OBJECT_PAGES:
            assert label in objects, f"admin_objects makes no {label}: add one for {page}"
            args = [objects[label].pk]
        else:
            args = CONFIG_PAGE_ARGS.get(suffix, [])
        urls[page] = reverse(f"admin:{name}", args=args)
    return urls


def test_the_table_names_every_admin_page_and_no_other():
    expected = set(table(EXPECTED, int))
    found = {"index", "password_change"} | set(model_pages())
    found |= {f"app {model._meta.app_label}" for model in admin.site._registry}
    assert sorted(found - expected) == [], "admin pages missing from EXPECTED"
    assert sorted(expected - found) == [], "EXPECTED rows for pages that do not exist"


@pytest.mark.parametrize("persona", PERSONAS)
def test_each_persona_gets_the_expected_status_on_every_page(
    personas, admin_objects, api_key, persona
):
    """…and no page shows a secret: a config's (nor its ciphertext, a Fernet token), an API
    key or its hash."""
    client = personas[persona]
    expected = table(EXPECTED, int)
    secrets = [CONFIG_SECRET, FERNET_TOKEN_START, api_key.secret, api_key.key.hashed]
    wrong, leaks = [], []
    for page, url in page_urls(admin_objects).items():
        response = client.get(url)
        if response.status_code != expected[page][persona]:
            wrong.append(f"{page}: {response.status_code}, expected {expected[page][persona]}")
        elif response.status_code == 302:
            assert response["Location"].startswith(reverse("admin:login")), page
        body = response.content.decode()
        leaks += [f"{page} shows {secret[:8]}…" for secret in secrets if secret in body]
    assert wrong == []
    assert leaks == []


@pytest.mark.parametrize("persona", PERSONAS)
def test_the_grant_action_works_for_finance_and_operators_only(personas, alice, persona):
    alice.account.refresh_from_db()  # the instance account_grant cached held no credits yet
    before = alice.account.balance
    response = personas[persona].post(
        reverse("admin:api_account_changelist"),
        {
            "action": "grant_credits",
            "_selected_action": [alice.account.pk],
            "index": "0",
            "apply": "1",
            "amount": "7",
        },
    )
    assert response.status_code in (200, 302, 403)
    alice.account.refresh_from_db()
    granted = alice.account.balance == before + 7
    assert granted == table(ACTIONS, lambda cell: cell == "yes")["grant_credits"][persona]


@pytest.mark.parametrize("persona", PERSONAS)
def test_the_revoke_action_works_for_finance_and_operators_only(personas, api_key, persona):
    response = personas[persona].post(
        reverse("admin:api_apikey_changelist"),
        {"action": "revoke_keys", "_selected_action": [api_key.key.pk], "index": "0"},
    )
    assert response.status_code in (200, 302, 403)
    api_key.key.refresh_from_db()
    revoked = api_key.key.revoked_at is not None
    assert revoked == table(ACTIONS, lambda cell: cell == "yes")["revoke_keys"][persona]


def test_the_admin_has_no_page_that_reveals_a_secret():
    """`manage.py config show --reveal` is the only way to see a config's secret."""
    names = [name for _page, (name, _suffix) in model_pages().items()]
    assert [name for name in names if "reveal" in name or "secret" in name] == []


def test_the_roles_migration_runs_again_and_reverses(support):
    migration = importlib.import_module("api.migrations.0006_operator_roles")
    state = MigrationLoader(connection).project_state(("api", "0006_operator_roles"))
    editor = SimpleNamespace(connection=connection)

    def roles() -> dict[str, int]:
        return {g.name: g.permissions.count() for g in Group.objects.order_by("name")}

    webhooks = importlib.import_module("webhooks.migrations.0002_support_role")
    latest = MigrationLoader(connection).project_state().apps

    def create() -> None:  # api's roles, then what webhooks' migration lets support see
        migration.roles_create(state.apps, editor)
        webhooks.support_views(latest, editor)

    created = roles()
    create()
    assert roles() == created == {"catalog editors": 21, "finance": 8, "support": 21}

    migration.roles_remove(state.apps, editor)
    assert roles() == {} and not support.groups.exists()
    create()
    assert roles() == created

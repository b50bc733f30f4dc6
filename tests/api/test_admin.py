import pytest
from django.urls import reverse

from api.models import ServiceHandler, ServiceOffer
from executor.handlers import all_handlers

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # admin_client's superuser gets a password; the default hasher costs half a second.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def offer_form(**overrides) -> dict:
    data = {
        "service": "text",
        "action": "greet",
        "handler": "local.echo",
        "prompt_template": "Hello {name}",
        "params": "{}",
        "price": "3",
        "create_qty": "1",
        "expiration": "",
        "description": "",
        "is_active": "on",
    }
    return {**data, **overrides}


def post_offer(client, **overrides):
    return client.post(reverse("admin:api_serviceoffer_add"), offer_form(**overrides))


def form_errors(response) -> dict:
    return response.context["adminform"].form.errors


def test_the_handler_add_form_offers_only_registered_handlers(admin_client):
    response = admin_client.get(reverse("admin:api_servicehandler_add"))
    choices = response.context["adminform"].form.fields["id"].choices
    assert [value for value, _label in choices] == ["", *all_handlers()]
    assert ("local.echo", f"local.echo — {all_handlers()['local.echo'].description}") in choices


def test_it_adds_a_registered_handler(admin_client):
    response = admin_client.post(
        reverse("admin:api_servicehandler_add"),
        {"id": "local.fail", "credits": "2", "description": ""},
    )
    assert response.status_code == 302
    assert ServiceHandler.objects.get(id="local.fail").credits == 2


def test_it_rejects_an_unregistered_handler_id(admin_client):
    response = admin_client.post(
        reverse("admin:api_servicehandler_add"),
        {"id": "nope.none", "credits": "1", "description": ""},
    )
    assert response.status_code == 200
    assert "Select a valid choice" in str(form_errors(response)["id"])
    assert not ServiceHandler.objects.exists()


def test_the_handler_change_form_keeps_the_id_read_only(admin_client, echo_handler):
    url = reverse("admin:api_servicehandler_change", args=[echo_handler.pk])
    assert "id" not in admin_client.get(url).context["adminform"].form.fields
    response = admin_client.post(url, {"id": "local.fail", "credits": "4", "description": "x"})
    assert response.status_code == 302
    assert list(ServiceHandler.objects.values_list("id", "credits")) == [("local.echo", 4)]


def test_it_adds_an_offer(admin_client, echo_handler):
    response = post_offer(admin_client, params="")
    assert response.status_code == 302, form_errors(response)
    offer = ServiceOffer.objects.get()
    assert (offer.endpoint, offer.params, offer.expiration) == ("/svc/text/greet/", {}, None)


@pytest.mark.parametrize("template", ["{x.__class__}", "{x[0]}", "Hello {name"])
def test_it_rejects_a_bad_template_on_the_template_field(admin_client, echo_handler, template):
    response = post_offer(admin_client, prompt_template=template)
    assert response.status_code == 200
    errors = form_errors(response)
    assert list(errors) == ["prompt_template"]
    assert "attribute or index access" in str(errors) or "bad template syntax" in str(errors)
    assert not ServiceOffer.objects.exists()


@pytest.mark.parametrize("service", ["request", "deal", "account"])
def test_it_rejects_a_reserved_service_slug(admin_client, echo_handler, service):
    response = post_offer(admin_client, service=service)
    assert "is reserved by the API" in str(form_errors(response)["service"])
    assert not ServiceOffer.objects.exists()


def test_it_rejects_a_duplicate_service_and_action(admin_client, greet_offer):
    response = post_offer(admin_client)
    errors = form_errors(response)
    assert list(errors) == ["action"]
    assert "an offer at /svc/text/greet/ already exists" in str(errors["action"])
    assert ServiceOffer.objects.count() == 1


@pytest.mark.parametrize("params", ["[1, 2]", '"text"', "{bad json"])
def test_it_rejects_params_that_are_not_a_json_object(admin_client, echo_handler, params):
    response = post_offer(admin_client, params=params)
    assert list(form_errors(response)) == ["params"]


def test_it_saves_changes_to_an_offer_under_its_own_key(admin_client, greet_offer):
    url = reverse("admin:api_serviceoffer_change", args=[greet_offer.pk])
    response = admin_client.post(url, offer_form(price="9", params='{"delay_seconds": 1}'))
    assert response.status_code == 302, form_errors(response)
    greet_offer.refresh_from_db()
    assert (greet_offer.price, greet_offer.params) == (9, {"delay_seconds": 1})


def test_the_offer_change_page_shows_inputs_and_endpoint(admin_client, greet_offer):
    response = admin_client.get(reverse("admin:api_serviceoffer_change", args=[greet_offer.pk]))
    html = response.content.decode()
    assert response.status_code == 200
    assert "<code>/svc/text/greet/</code>" in html
    assert "<code>name</code>, <code>place</code>" in html
    assert "{&quot;name&quot;: &quot;…&quot;, &quot;place&quot;: &quot;…&quot;}" in html


@pytest.mark.parametrize("model", ["servicehandler", "serviceoffer", "account"])
def test_the_changelists_render(admin_client, greet_offer, alice, model):
    response = admin_client.get(reverse(f"admin:api_{model}_changelist"), {"q": "a"})
    assert response.status_code == 200


def test_the_handler_changelist_shows_offer_counts_and_registration(admin_client, greet_offer):
    ServiceHandler.objects.create(id="gone.handler", credits=0)
    response = admin_client.get(reverse("admin:api_servicehandler_changelist"))
    rows = {row.id: row for row in response.context["cl"].result_list}
    assert rows["local.echo"].offer_count == 1 and rows["gone.handler"].offer_count == 0
    assert 'alt="False"' in response.content.decode()  # gone.handler is not in the code


def test_the_offer_changelist_shows_endpoints(admin_client, greet_offer):
    response = admin_client.get(reverse("admin:api_serviceoffer_changelist"))
    assert "<code>/svc/text/greet/</code>" in response.content.decode()


def test_an_account_balance_cannot_be_edited_by_hand(admin_client, alice):
    url = reverse("admin:api_account_change", args=[alice.account.pk])
    assert admin_client.get(url).status_code == 200
    admin_client.post(url, {"balance": "42"})
    alice.account.refresh_from_db()
    assert alice.account.balance == 1000


def test_the_grant_action_adds_credits_through_the_ledger(admin_client, alice, bob):
    url = reverse("admin:api_account_changelist")
    ids = [alice.account.pk, bob.account.pk]
    form = admin_client.post(url, {"action": "grant_credits", "_selected_action": ids})
    assert form.status_code == 200 and b"Grant credits" in form.content
    done = admin_client.post(
        url,
        {
            "action": "grant_credits",
            "_selected_action": ids,
            "apply": "1",
            "amount": "25",
            "note": "promo",
        },
    )
    assert done.status_code == 302
    for user in (alice, bob):
        user.account.refresh_from_db()
        assert user.account.balance == 1025
        assert user.ledger_entries.filter(kind="grant", amount=25, note="promo").exists()


def test_the_grant_action_rejects_a_bad_amount(admin_client, alice):
    url = reverse("admin:api_account_changelist")
    response = admin_client.post(
        url,
        {
            "action": "grant_credits",
            "apply": "1",
            "amount": "-5",
            "_selected_action": [alice.account.pk],
        },
    )
    assert response.status_code == 200
    alice.account.refresh_from_db()
    assert alice.account.balance == 1000


@pytest.mark.parametrize("model", ["ledgerentry", "usagerecord"])
def test_the_ledger_and_usage_are_read_only(admin_client, alice, model):
    assert admin_client.get(reverse(f"admin:api_{model}_changelist")).status_code == 200
    assert admin_client.get(reverse(f"admin:api_{model}_add")).status_code == 403


def test_the_usage_changelist_totals_per_resource_and_client(admin_client, alice_api, greet_offer):
    from tests.helpers import run_worker, submit

    submit(alice_api, "/svc/text/greet/", {"name": "Ada", "place": "P"})
    run_worker()
    page = admin_client.get(reverse("admin:api_usagerecord_changelist")).content.decode()
    assert "Per resource" in page and "<td>local</td>" in page and "<td>alice</td>" in page


def test_the_offer_change_page_says_when_there_are_no_inputs(admin_client, make_offer):
    offer = make_offer(prompt_template="Hi")
    response = admin_client.get(reverse("admin:api_serviceoffer_change", args=[offer.pk]))
    assert "none; POST <code>{}</code>" in response.content.decode()

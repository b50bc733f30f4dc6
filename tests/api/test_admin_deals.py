import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.urls import reverse

from api import deal_rules
from api.models import ServiceDeal, ServiceDealAddon, ServiceDealItem

pytestmark = pytest.mark.django_db

ADD_URL = "admin:api_servicedeal_add"


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    # admin_client's superuser gets a password; the default hasher costs half a second.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def offers(make_offer) -> dict:
    """write (3) and shorten (4, a pipeline step's template) as items; slow (5, with an input of
    its own) as an add-on."""
    return {
        "write": make_offer(action="write", price=3, prompt_template="Write about {topic}"),
        "shorten": make_offer(
            action="shorten", price=4, prompt_template="Shorten {previous} for {reader}"
        ),
        "slow": make_offer(action="slow", price=5, prompt_template="Slowly: {topic} {pace}"),
    }


def inline_rows(prefix: str, rows: list[dict], initial: int = 0) -> dict:
    data = {
        f"{prefix}-TOTAL_FORMS": str(len(rows)),
        f"{prefix}-INITIAL_FORMS": str(initial),
        f"{prefix}-MIN_NUM_FORMS": "0",
        f"{prefix}-MAX_NUM_FORMS": "1000",
    }
    for index, row in enumerate(rows):
        data.update({f"{prefix}-{index}-{field}": value for field, value in row.items()})
    return data


def item(offer, pipeline="", position="", **fields) -> dict:
    return {"offer": str(offer.pk), "pipeline": pipeline, "position": position, **fields}


def addon(offer, position="", **fields) -> dict:
    return {"offer": str(offer.pk), "position": position, **fields}


def deal_form(items: list[dict], addons: list[dict], initial=(0, 0), **overrides) -> dict:
    data = {
        "name": "starter",
        "price": "",
        "price_modifier": "10",
        "addons_modifier": "50",
        "description": "",
        "is_active": "on",
        **inline_rows("items", items, initial[0]),
        **inline_rows("addon_items", addons, initial[1]),
    }
    return {**data, **overrides}


def post_deal(client, items, addons, **overrides):
    return client.post(reverse(ADD_URL), deal_form(items, addons, **overrides))


def inline_errors(response) -> list[str]:
    formsets = [inline.formset for inline in response.context["inline_admin_formsets"]]
    return [str(error) for formset in formsets for error in formset.non_form_errors()]


def saved_rows(deal) -> tuple[list, list]:
    items = [(i.position, str(i.offer), i.pipeline) for i in deal.items.order_by("position")]
    addons = [(a.position, str(a.offer)) for a in deal.addon_items.order_by("position")]
    return items, addons


def make_deal(offers, **fields) -> ServiceDeal:
    deal = ServiceDeal.objects.create(name="starter", price_modifier=10, addons_modifier=50)
    ServiceDealItem.objects.create(deal=deal, offer=offers["write"], position=1)
    ServiceDealItem.objects.create(
        deal=deal, offer=offers["shorten"], position=2, pipeline=deal_rules.OVERWRITE
    )
    ServiceDealAddon.objects.create(deal=deal, offer=offers["slow"], position=1)
    ServiceDeal.objects.filter(pk=deal.pk).update(**fields)
    deal.refresh_from_db()
    return deal


def preview_rows(page: str) -> list[list[str]]:
    table = re.search(r'<table class="deal-price-preview".*?</table>', page, re.S).group()
    body = table.split("<tbody>")[1]
    rows = re.findall(r"<tr>(.*?)</tr>", body, re.S)
    return [[html.unescape(cell) for cell in re.findall(r"<td>(.*?)</td>", row)] for row in rows]


def test_the_add_page_has_the_inlines_and_the_live_preview(admin_client, offers):
    page = admin_client.get(reverse(ADD_URL))
    prefixes = [inline.formset.prefix for inline in page.context["inline_admin_formsets"]]
    assert prefixes == ["items", "addon_items"]
    html_text = page.content.decode()
    assert "/static/api/deal_price_preview.js" in html_text
    assert finders.find("api/deal_price_preview.js")
    assert preview_rows(html_text) == [["the offers", "0", "0"]]
    prices = {str(offer.pk): offer.price for offer in offers.values()}
    embedded = re.search(r'data-offer-prices="([^"]*)"', html_text).group(1)
    assert json.loads(html.unescape(embedded)) == prices


def test_it_adds_a_deal_with_its_offers_and_addons_in_the_order_shown(admin_client, offers):
    response = post_deal(
        admin_client,
        [item(offers["write"]), item(offers["shorten"], pipeline=deal_rules.EXTEND)],
        [addon(offers["slow"])],
    )
    assert response.status_code == 302, response.context and inline_errors(response)
    deal = ServiceDeal.objects.get()
    assert (deal.name, deal.price, deal.price_modifier, deal.addons_modifier) == (
        "starter",
        None,
        10,
        50,
    )
    assert saved_rows(deal) == (
        [(1, "text/write", ""), (2, "text/shorten", "extend")],
        [(1, "text/slow")],
    )


def test_it_orders_rows_by_position_keeping_unnumbered_rows_after_the_row_above(
    admin_client, make_offer
):
    a, b, d = (make_offer(action=name, prompt_template="{previous}") for name in "abd")
    c = make_offer(action="c", prompt_template="{topic}")
    rows = [item(a, "overwrite", "3"), item(b, "extend"), item(c, position="1"), item(d, "extend")]
    response = post_deal(admin_client, rows, [])
    assert response.status_code == 302, inline_errors(response)
    # Keys (3, 3, 1, 1): c, then d below it; a, then b below it.
    assert saved_rows(ServiceDeal.objects.get())[0] == [
        (1, "text/c", ""),
        (2, "text/d", "extend"),
        (3, "text/a", "overwrite"),
        (4, "text/b", "extend"),
    ]


@pytest.mark.parametrize(
    "items, addons, problem",
    [
        (
            [("write", "overwrite"), ("shorten", "extend")],
            [],
            "the first offer (text/write) cannot be a pipeline step",
        ),
        (
            [("write", ""), ("shorten", "")],
            [],
            "offer 2 (text/shorten) uses {previous}, which only a pipeline step receives",
        ),
        ([("write", "")], ["slow", "slow"], "add-on text/slow is listed twice"),
        ([("write", "")], ["write"], "text/write is both an offer and an add-on of the deal"),
        ([], ["slow"], "a deal needs at least one offer"),
    ],
)
def test_it_rejects_a_deal_that_deal_rules_refuse_and_saves_nothing(
    admin_client, offers, items, addons, problem
):
    item_rows = [item(offers[name], pipeline) for name, pipeline in items]
    response = post_deal(admin_client, item_rows, [addon(offers[name]) for name in addons])
    assert response.status_code == 200
    assert any(problem in error for error in inline_errors(response)), inline_errors(response)
    assert problem in html.unescape(response.content.decode())
    assert ServiceDeal.objects.count() == 0
    assert ServiceDealItem.objects.count() == ServiceDealAddon.objects.count() == 0


def test_a_deleted_row_does_not_count(admin_client, offers):
    rows = [item(offers["write"], "overwrite", DELETE="on"), item(offers["write"])]
    response = post_deal(admin_client, rows, [addon(offers["slow"], DELETE="on")])
    assert response.status_code == 302, inline_errors(response)
    assert saved_rows(ServiceDeal.objects.get()) == ([(1, "text/write", "")], [])


def test_a_deleted_addon_row_with_errors_does_not_skip_the_check(admin_client, offers):
    broken = {"offer": "999999", "position": "", "DELETE": "on"}  # no such offer, but deleted
    response = post_deal(admin_client, [item(offers["write"], "overwrite")], [broken])
    assert "cannot be a pipeline step" in " ".join(inline_errors(response))
    assert ServiceDeal.objects.count() == 0


def existing_items(deal) -> list[dict]:
    return [
        item(row.offer, row.pipeline, str(row.position), id=str(row.pk), deal=str(deal.pk))
        for row in deal.ordered_items()
    ]


def test_a_change_renumbers_rows_whose_form_did_not_change(admin_client, offers, make_offer):
    deal = make_deal(offers)
    extra = ServiceDealItem.objects.create(deal=deal, offer=make_offer(action="x"), position=3)
    rows = existing_items(deal)
    rows[2]["position"] = "1"  # ties with text/write, so it follows it: shorten moves to 3
    data = deal_form(rows, [], initial=(3, 0))
    response = admin_client.post(reverse("admin:api_servicedeal_change", args=[deal.pk]), data)
    assert response.status_code == 302, inline_errors(response)
    assert saved_rows(deal)[0] == [
        (1, "text/write", ""),
        (2, str(extra.offer), ""),
        (3, "text/shorten", "overwrite"),
    ]


def test_a_rejected_change_leaves_the_deal_as_it_was(admin_client, offers):
    deal = make_deal(offers)
    rows = existing_items(deal)
    rows[0]["pipeline"] = "overwrite"
    data = deal_form(rows, [], initial=(2, 0), name="renamed", price_modifier="20")
    response = admin_client.post(reverse("admin:api_servicedeal_change", args=[deal.pk]), data)
    assert response.status_code == 200
    assert "cannot be a pipeline step" in " ".join(inline_errors(response))
    deal.refresh_from_db()
    assert (deal.name, deal.price_modifier) == ("starter", 10)
    assert saved_rows(deal)[0] == [(1, "text/write", ""), (2, "text/shorten", "overwrite")]


def test_the_change_page_shows_endpoint_inputs_and_price_preview(admin_client, offers):
    deal = make_deal(offers)
    response = admin_client.get(reverse("admin:api_servicedeal_change", args=[deal.pk]))
    page = response.content.decode()
    assert response.status_code == 200
    assert "<code>/svc/deal/starter/</code>" in page
    assert (
        "<code>topic</code>, <code>reader</code><br>with add-on text/slow, also <code>pace</code>"
        in page
    )
    body = {"inputs": {"topic": "…", "reader": "…", "pace": "…"}, "addons": ["text/slow"]}
    assert html.escape(json.dumps(body, ensure_ascii=False)) in page
    # 3 + 4 less 10% = 6.3 -> 6; 5 less 50% = 2.5 -> 3 (half up); 6 + 3 = 9.
    assert preview_rows(page) == [
        ["the offers", "7", "6"],
        ["add-on text/slow", "5", "3"],
        ["with all add-ons", "12", "9"],
    ]


def test_the_price_preview_uses_a_fixed_price(admin_client, offers):
    deal = make_deal(offers, price=20, addons_modifier=0)
    page = admin_client.get(reverse("admin:api_servicedeal_change", args=[deal.pk]))
    assert preview_rows(page.content.decode()) == [
        ["the offers", "7", "20"],
        ["add-on text/slow", "5", "5"],
        ["with all add-ons", "12", "25"],
    ]


def test_the_change_page_survives_a_deal_without_offers_or_with_a_bad_template(
    admin_client, offers, make_offer
):
    empty = ServiceDeal.objects.create(name="empty")
    page = admin_client.get(reverse("admin:api_servicedeal_change", args=[empty.pk]))
    assert page.status_code == 200
    assert preview_rows(page.content.decode()) == [["the offers", "0", "0"]]

    broken = make_deal(offers)
    bad = make_offer(action="bad", prompt_template="{x.__class__}")  # the ORM skips validators
    ServiceDealItem.objects.create(deal=broken, offer=bad, position=3)
    page = admin_client.get(reverse("admin:api_servicedeal_change", args=[broken.pk]))
    assert page.status_code == 200
    assert "unknown: offer 3 (text/bad)" in html.unescape(page.content.decode())


def test_the_changelist_shows_endpoints_offers_and_prices(admin_client, offers):
    make_deal(offers)
    response = admin_client.get(reverse("admin:api_servicedeal_changelist"), {"q": "start"})
    page = html.unescape(response.content.decode())
    assert response.status_code == 200
    assert "<code>/svc/deal/starter/</code>" in page
    assert "text/write, text/shorten (overwrite); add-ons: text/slow" in page
    assert "-10%; add-ons -50%" in page
    missing = admin_client.get(reverse("admin:api_servicedeal_changelist"), {"q": "nothing"})
    assert missing.context["cl"].result_count == 0


@pytest.mark.skipif(not shutil.which("node"), reason="node is not installed")
def test_the_live_preview_rounds_like_deal_rules():
    script = Path(finders.find("api/deal_price_preview.js"))
    cases = [(amount, percent) for amount in range(0, 41) for percent in range(0, 101, 5)]
    program = (
        f"const m = require({json.dumps(str(script))});"
        f"const cases = {json.dumps(cases)};"
        "console.log(JSON.stringify({"
        "  off: cases.map(([a, p]) => m.percentOff(a, p)),"
        "  deal: [m.dealPrice(null, 10, [3, 4], [5], 50), m.dealPrice(20, 10, [3], [], 50)],"
        "}));"
    )
    out = json.loads(
        subprocess.run(["node", "-e", program], capture_output=True, check=True).stdout
    )
    assert out["off"] == [deal_rules.percent_off(amount, percent) for amount, percent in cases]
    assert out["deal"] == [9, 20]

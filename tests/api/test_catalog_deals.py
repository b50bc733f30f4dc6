import io
import textwrap
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from api.models import ServiceDeal, ServiceDealAddon, ServiceDealItem, ServiceOffer
from api.services.catalog import catalog_export

pytestmark = pytest.mark.django_db

# Lines 1-6; the deals: section starts at line 7 in every file below.
OFFERS = """\
handlers:
  - {id: local.echo, credits: 1}
offers:
  - {service: text, action: greet, price: 4, prompt_template: "Hi {name}", handler: local.echo}
  - {service: text, action: shout, price: 2, prompt_template: "{previous}!", handler: local.echo}
  - {service: text, action: slow, price: 6, prompt_template: "Slow {name}", handler: local.echo}
"""

GOOD_DEALS = """\
deals:
  - name: starter
    offers:
      - {offer: text/greet, pipeline: null}
      - {offer: text/shout, pipeline: overwrite}
    price: null
    price_modifier: 10
    addons: [text/slow]
    addons_modifier: 50
  - name: combo
    offers:
      - text/slow
      - {offer: text/shout, pipeline: extend}
      - {offer: text/shout, pipeline: pass_through}
    price: 5
    description: Three steps
    is_active: false
"""

STARTER_EXPORTED = {
    "name": "starter",
    "offers": [
        {"offer": "text/greet", "pipeline": None},
        {"offer": "text/shout", "pipeline": "overwrite"},
    ],
    "price": None,
    "price_modifier": 10,
    "addons": ["text/slow"],
    "addons_modifier": 50,
    "description": "",
    "is_active": True,
}


def write(tmp_path: Path, text: str, name: str = "catalog.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def run(*args) -> str:
    out = io.StringIO()
    call_command("catalog", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def run_failing(*args) -> tuple[str, str]:
    err = io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command("catalog", *args, stdout=io.StringIO(), stderr=err)
    return str(info.value), err.getvalue()


def links(name: str) -> tuple[list, list]:
    """A deal's items as (position, "service/action", pipeline) and add-ons as (position, …)."""
    deal = ServiceDeal.objects.get(name=name)
    items = [(i.position, str(i.offer), i.pipeline) for i in deal.ordered_items()]
    return items, [(a.position, str(a.offer)) for a in deal.ordered_addons()]


def catalog_state() -> list:
    """Every row an import may touch, to show that a refused import wrote nothing."""
    return [
        *ServiceOffer.objects.order_by("id").values_list("id", "service", "action", "price"),
        *ServiceDeal.objects.order_by("id").values_list(
            "id", "name", "price", "price_modifier", "addons_modifier", "description", "is_active"
        ),
        *ServiceDealItem.objects.order_by("id").values_list(
            "id", "deal_id", "offer_id", "position", "pipeline"
        ),
        *ServiceDealAddon.objects.order_by("id").values_list(
            "id", "deal_id", "offer_id", "position"
        ),
    ]


def test_it_creates_deals_with_their_items_in_order_and_their_addons(tmp_path):
    out = run("import", write(tmp_path, OFFERS + GOOD_DEALS))

    assert "deals: 2 created, 0 updated, 0 unchanged" in out
    starter = ServiceDeal.objects.get(name="starter")
    assert (starter.price, starter.price_modifier, starter.addons_modifier) == (None, 10, 50)
    assert (starter.description, starter.is_active) == ("", True)
    assert links("starter") == (
        [(0, "text/greet", ""), (1, "text/shout", "overwrite")],
        [(0, "text/slow")],
    )
    combo = ServiceDeal.objects.get(name="combo")
    assert (combo.price, combo.price_modifier, combo.addons_modifier) == (5, 0, 0)
    assert (combo.description, combo.is_active) == ("Three steps", False)
    assert links("combo") == (
        [(0, "text/slow", ""), (1, "text/shout", "extend"), (2, "text/shout", "pass_through")],
        [],
    )


def test_it_round_trips_deals_export_import_export(tmp_path):
    run("import", write(tmp_path, OFFERS + GOOD_DEALS))
    first = run("export")
    state = catalog_state()

    out = run("import", write(tmp_path, first, "exported.yaml"))
    second = run("export")

    assert "deals: 0 created, 0 updated, 2 unchanged" in out
    assert "offers: 0 created, 0 updated, 3 unchanged" in out
    assert second == first
    assert catalog_state() == state
    deals = catalog_export()["deals"]
    assert [deal["name"] for deal in deals] == ["combo", "starter"]
    assert list(deals[1].items()) == list(STARTER_EXPORTED.items())  # the order too
    assert "      - offer: text/slow\n        pipeline: null\n" in first


def test_it_replaces_the_items_and_addons_of_an_existing_deal(tmp_path):
    run("import", write(tmp_path, OFFERS + GOOD_DEALS))
    changed = GOOD_DEALS.replace(
        """\
      - {offer: text/greet, pipeline: null}
      - {offer: text/shout, pipeline: overwrite}
    price: null
    price_modifier: 10
    addons: [text/slow]
""",
        """\
      - {offer: text/slow}
      - {offer: text/shout, pipeline: extend}
      - {offer: text/greet}
    price: null
    price_modifier: 10
""",
    )

    out = run("import", write(tmp_path, OFFERS + changed))

    # Only the lists changed, which alone makes the deal "updated".
    assert "deals: 0 created, 1 updated, 1 unchanged" in out
    assert links("starter") == (
        [(0, "text/slow", ""), (1, "text/shout", "extend"), (2, "text/greet", "")],
        [],
    )
    assert ServiceDealItem.objects.count() == 6 and not ServiceDealAddon.objects.exists()


def test_it_renumbers_positions_to_the_order_in_the_file(tmp_path, make_offer):
    greet = make_offer(service="text", action="greet", prompt_template="Hi {name}")
    shout = make_offer(service="text", action="shout", prompt_template="{previous}!")
    deal = ServiceDeal.objects.create(name="starter")
    ServiceDealItem.objects.create(deal=deal, offer=greet, position=5)
    ServiceDealItem.objects.create(deal=deal, offer=shout, position=9, pipeline="overwrite")
    text = """\
    deals:
      - name: starter
        offers: [text/greet, {offer: text/shout, pipeline: overwrite}]
    """

    out = run("import", write(tmp_path, text))

    assert "deals: 0 created, 1 updated, 0 unchanged" in out
    assert links("starter") == ([(0, "text/greet", ""), (1, "text/shout", "overwrite")], [])


def test_it_accepts_a_deal_naming_offers_only_in_the_database(tmp_path, make_offer):
    greet = make_offer(service="text", action="greet", prompt_template="Hi {name}")
    slow = make_offer(service="text", action="slow", prompt_template="Slow {name}")
    text = """\
    deals:
      - {name: solo, offers: [{offer: text/greet, pipeline: null}], addons: [text/slow]}
    """

    out = run("import", write(tmp_path, text))

    assert "deals: 1 created" in out
    deal = ServiceDeal.objects.get(name="solo")
    assert [item.offer for item in deal.ordered_items()] == [greet]
    assert [addon.offer for addon in deal.ordered_addons()] == [slow]


def test_it_checks_a_deal_against_the_database_template_of_an_offer(tmp_path, make_offer):
    make_offer(service="text", action="shout", prompt_template="{previous}!")
    text = """\
    deals:
      - {name: solo, offers: [text/shout]}
    """
    _, err = run_failing("import", write(tmp_path, text))
    assert "line 2: deals[0] (solo): offer 1 (text/shout) uses {previous}" in err
    assert not ServiceDeal.objects.exists()


@pytest.mark.parametrize(
    "db_template, file_template, problem",
    [
        ("{x}", "{previous} {x}", "offer 1 (text/plain) uses {previous}"),
        ("{previous} {x}", "{x}", None),
    ],
)
def test_it_checks_a_deal_against_the_template_the_file_gives_an_offer(
    tmp_path, make_offer, db_template, file_template, problem
):
    make_offer(service="text", action="plain", prompt_template=db_template)
    text = f"""\
    offers:
      - {{service: text, action: plain, price: 1, prompt_template: "{file_template}",
         handler: local.echo}}
    deals:
      - {{name: solo, offers: [text/plain]}}
    """
    if problem:
        _, err = run_failing("import", write(tmp_path, text))
        assert f"line 5: deals[0] (solo): {problem}" in err
        assert not ServiceDeal.objects.exists()
    else:
        assert "deals: 1 created" in run("import", write(tmp_path, text))


# A valid change to an offer (text/greet costs 40) and, after the faulty deal, a valid change
# to a deal: neither may be written when the file has a problem.
BAD_OFFERS = OFFERS.replace("action: greet, price: 4,", "action: greet, price: 40,")
VALID_DEAL_CHANGE = "  - {name: combo, offers: [text/greet], price: 1}\n"
NOT_FOUND = "is neither under offers: in this file nor in the database; add it under offers:"


# (test id, the deals: list, the one problem expected); the list starts at line 8.
DEAL_PROBLEMS = [
    (
        "wrong-type",
        '  - {name: bad, offers: [text/greet], price_modifier: "10"}\n',
        "line 8: deals[0] (bad): price_modifier: must be an integer, not '10'",
    ),
    (
        "unknown-key",
        "  - {name: bad, offers: [text/greet], colour: red}\n",
        "line 8: deals[0] (bad): unknown key 'colour'",
    ),
    (
        "no-name",
        "  - {offers: [text/greet]}\n",
        "line 8: deals[0]: missing required field 'name'",
    ),
    (
        "no-offers",
        "  - {name: bad}\n",
        "line 8: deals[0] (bad): missing required field 'offers'",
    ),
    (
        "offers-not-a-list",
        "  - {name: bad, offers: text/greet}\n",
        "line 8: deals[0] (bad): offers: must be a list, not 'text/greet'",
    ),
    (
        "name-not-a-slug",
        '  - {name: "Bad Name", offers: [text/greet]}\n',
        "line 8: deals[0] (Bad Name): name: Enter a valid",
    ),
    (
        "duplicate-name",
        "  - {name: bad, offers: [text/greet]}\n  - {name: bad, offers: [text/slow]}\n",
        "line 9: deals[1] (bad): duplicate of deals[0] (bad) (line 8); each deal may appear once",
    ),
    (
        "unknown-offer",
        """\
  - name: bad
    offers:
      - {offer: text/greet}
      - {offer: text/ghost, pipeline: overwrite}
""",
        f"line 11: deals[0] (bad): offer 2 (text/ghost) {NOT_FOUND}",
    ),
    (
        "unknown-addon",
        """\
  - name: bad
    offers: [text/greet]
    addons:
      - text/slow
      - text/nope
""",
        f"line 12: deals[0] (bad): add-on 2 (text/nope) {NOT_FOUND}",
    ),
    (
        "offer-not-service-action",
        "  - {name: bad, offers: [greet]}\n",
        "line 8: deals[0] (bad): offer 1: must name an offer as 'service/action', not 'greet'",
    ),
    (
        "addon-not-a-string",
        "  - {name: bad, offers: [text/greet], addons: [[text/slow]]}\n",
        "line 8: deals[0] (bad): add-on 1: must name an offer as 'service/action', "
        "not ['text/slow']",
    ),
    (
        "unknown-pipeline-mode",
        """\
  - name: bad
    offers:
      - offer: text/greet
      - offer: text/shout
        pipeline: append
""",
        "line 12: deals[0] (bad): offer 2: pipeline must be one of overwrite, extend, "
        "pass_through or null, not 'append'",
    ),
    (
        "unknown-item-key",
        "  - {name: bad, offers: [{offer: text/greet, mode: extend}]}\n",
        "line 8: deals[0] (bad): offer 1: unknown key 'mode' (known: offer, pipeline)",
    ),
    (
        "item-without-offer",
        "  - {name: bad, offers: [{pipeline: extend}]}\n",
        "line 8: deals[0] (bad): offer 1: missing required field 'offer'",
    ),
    (
        "price-modifier-over-100",
        "  - {name: bad, offers: [text/greet], price_modifier: 150}\n",
        "line 8: deals[0] (bad): price_modifier: a percentage from 0 to 100",
    ),
    (
        "addons-modifier-over-100",
        "  - {name: bad, offers: [text/greet], addons_modifier: 101}\n",
        "line 8: deals[0] (bad): addons_modifier: a percentage from 0 to 100",
    ),
    (
        "first-offer-a-pipeline-step",
        "  - {name: bad, offers: [{offer: text/greet, pipeline: overwrite}]}\n",
        "line 8: deals[0] (bad): the first offer (text/greet) cannot be a pipeline step",
    ),
    (
        "previous-outside-a-pipeline-step",
        "  - {name: bad, offers: [text/greet, text/shout]}\n",
        "line 8: deals[0] (bad): offer 2 (text/shout) uses {previous}, which only a "
        "pipeline step receives",
    ),
    (
        "addon-twice",
        "  - {name: bad, offers: [text/greet], addons: [text/slow, text/slow]}\n",
        "line 8: deals[0] (bad): add-on text/slow is listed twice",
    ),
    (
        "offer-and-addon",
        "  - {name: bad, offers: [text/greet], addons: [text/greet]}\n",
        "line 8: deals[0] (bad): text/greet is both an offer and an add-on of the deal",
    ),
    (
        "no-offer-at-all",
        "  - {name: bad, offers: []}\n",
        "line 8: deals[0] (bad): a deal needs at least one offer",
    ),
]


@pytest.mark.parametrize(
    "deals, expected",
    [pytest.param(deals, expected, id=id_) for id_, deals, expected in DEAL_PROBLEMS],
)
def test_it_reports_a_deal_problem_at_its_line_and_writes_nothing(tmp_path, deals, expected):
    run("import", write(tmp_path, OFFERS + GOOD_DEALS))
    before = catalog_state()
    path = write(tmp_path, BAD_OFFERS + "deals:\n" + deals + VALID_DEAL_CHANGE, "bad.yaml")

    reason, err = run_failing("import", path)

    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{path}: {expected}"), err
    assert "1 problem; nothing was imported" in reason
    assert catalog_state() == before

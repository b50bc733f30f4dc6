import io
import textwrap
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from api.models import ServiceDeal, ServiceHandler, ServiceOffer
from api.services.catalog import catalog_import
from executor.handlers import all_handlers

pytestmark = pytest.mark.django_db

GOOD_CATALOG = """\
handlers:
  - {id: local.echo, credits: 1, description: Echo}
  - {id: local.fail, credits: 0}
offers:
  - {service: text, action: greet, price: 3, prompt_template: "Hello {name}",
     handler: local.echo, create_qty: 1, expiration: 3600, params: {}}
  - service: text
    action: slow
    price: 2
    prompt_template: |
      Slowly, über:
      {text}
    handler: local.echo
    params: {delay_seconds: 2, nested: {a: [1, 2]}}
    description: A slow one
  - {service: text, action: broken, price: 1, prompt_template: "{x}", handler: local.fail,
     is_active: false}
deals: []
"""

# Line numbers matter: the test below expects each problem at its line.
BAD_CATALOG = """\
handlers:
  - {id: local.echo, credits: 1}
  - {id: x.y, credits: 1}
offers:
  - {service: text, action: ok, price: 1, prompt_template: "{a}", handler: local.echo}
  - {service: text, action: attr, price: 1, prompt_template: "{x.__class__}", handler: local.echo}
  - {service: text, action: index, price: 1, prompt_template: "{x[0]}", handler: local.echo}
  - {service: request, action: r, price: 1, prompt_template: "{a}", handler: local.echo}
  - {service: text, action: ok, price: 2, prompt_template: "{a}", handler: local.echo}
  - {service: text, action: extra, price: 1, prompt_template: "{a}", handler: local.echo, colour: 1}
  - {service: text, action: noprice, prompt_template: "{a}", handler: local.echo}
  - {service: text, action: ghost, price: 1, prompt_template: "{a}", handler: nope.none}
  - service: text
    action: block
    price: -1
    prompt_template: "{a"
    handler: local.echo
    params: []
    create_qty: 2.5
"""

EXPECTED_PROBLEMS = [
    "line 3: handlers[1] (x.y): id: no handler 'x.y' is registered",
    "line 6: offers[1] (text/attr): prompt_template: {x.__class__} is not a plain field name",
    "line 7: offers[2] (text/index): prompt_template: {x[0]} is not a plain field name",
    "line 8: offers[3] (request/r): service: 'request' is reserved",
    "line 9: offers[4] (text/ok): duplicate of offers[0] (text/ok) (line 5)",
    "line 10: offers[5] (text/extra): unknown key 'colour'",
    "line 11: offers[6] (text/noprice): missing required field 'price'",
    "line 12: offers[7] (text/ghost): handler 'nope.none' is not registered",
    "line 15: offers[8] (text/block): price: Ensure this value is greater than or equal to 0.",
    "line 16: offers[8] (text/block): prompt_template: bad template syntax",
    "line 18: offers[8] (text/block): params: must be a mapping",
    "line 19: offers[8] (text/block): create_qty: must be an integer, not 2.5",
]


def write(tmp_path: Path, text: str, name: str = "catalog.yaml") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(path)


def run(*args) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("catalog", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def run_failing(*args) -> tuple[str, str]:
    err = io.StringIO()
    with pytest.raises(CommandError) as info:
        call_command("catalog", *args, stdout=io.StringIO(), stderr=err)
    return str(info.value), err.getvalue()


def catalog_rows() -> list[tuple]:
    return [
        *ServiceHandler.objects.values_list("id", "credits", "description"),
        *ServiceOffer.objects.values_list(
            "service",
            "action",
            "price",
            "prompt_template",
            "handler_id",
            "create_qty",
            "expiration",
            "params",
            "description",
            "is_active",
        ),
    ]


def test_it_round_trips_import_export_import(tmp_path):
    out, _ = run("import", write(tmp_path, GOOD_CATALOG))
    assert "handlers: 2 created, 0 updated, 0 unchanged" in out
    assert "offers: 3 created, 0 updated, 0 unchanged" in out
    first, _ = run("export")
    rows = catalog_rows()

    out, _ = run("import", write(tmp_path, first, "exported.yaml"))
    second, _ = run("export")

    assert "offers: 0 created, 0 updated, 3 unchanged" in out
    assert second == first
    assert catalog_rows() == rows
    slow = ServiceOffer.objects.get(service="text", action="slow")
    assert slow.prompt_template == "Slowly, über:\n{text}\n"
    assert slow.params == {"delay_seconds": 2, "nested": {"a": [1, 2]}}
    assert slow.is_active and slow.create_qty == 1 and slow.expiration is None


def test_it_exports_to_a_file_with_output(tmp_path):
    run("import", write(tmp_path, GOOD_CATALOG))
    printed, _ = run("export")
    target = tmp_path / "out.yaml"
    run("export", "--output", str(target))
    assert target.read_text(encoding="utf-8") == printed


def test_it_reports_every_problem_with_its_line_and_changes_nothing(tmp_path, make_offer):
    make_offer(service="text", action="ok", prompt_template="old {a}", price=7)
    before = catalog_rows()

    reason, err = run_failing("import", write(tmp_path, BAD_CATALOG))

    lines = err.splitlines()
    assert len(lines) == len(EXPECTED_PROBLEMS)
    for expected, line in zip(EXPECTED_PROBLEMS, lines, strict=True):
        assert expected in line
    assert f"{len(EXPECTED_PROBLEMS)} problems; nothing was imported" in reason
    # Even the valid items (local.echo, text/ok) were not written.
    assert catalog_rows() == before


def test_it_rejects_an_offer_whose_handler_is_nowhere_defined(tmp_path):
    text = """\
    offers:
      - {service: text, action: greet, price: 1, prompt_template: "{a}", handler: local.fail}
    """
    _, err = run_failing("import", write(tmp_path, text))
    assert "line 2: offers[0] (text/greet): handler 'local.fail' is neither under handlers:" in err


def test_it_accepts_an_offer_whose_handler_is_already_in_the_database(tmp_path, echo_handler):
    text = """\
    offers:
      - {service: text, action: greet, price: 1, prompt_template: "{a}", handler: local.echo}
    """
    out, _ = run("import", write(tmp_path, text))
    assert "offers: 1 created" in out
    assert ServiceOffer.objects.get().handler == echo_handler


def test_it_updates_an_existing_offer_by_service_and_action(tmp_path, make_offer):
    offer = make_offer(
        service="text",
        action="greet",
        prompt_template="Hi {x}",
        price=1,
        description="old",
        params={"old": True},
    )
    out, _ = run("import", write(tmp_path, GOOD_CATALOG))
    assert "offers: 2 created, 1 updated, 0 unchanged" in out
    assert "handlers: 1 created, 1 updated, 0 unchanged" in out
    offer.refresh_from_db()
    assert (offer.price, offer.prompt_template, offer.expiration) == (3, "Hello {name}", 3600)
    # Omitted optional fields take the model's defaults, whatever the row had.
    assert offer.description == "" and offer.params == {}
    assert ServiceOffer.objects.count() == 3


def test_it_rejects_invalid_yaml_with_a_one_line_reason(tmp_path):
    path = write(tmp_path, "offers:\n  - {service: text\n  - oops: [\n")
    reason, err = run_failing("import", path)
    assert reason.startswith(f"{path}: invalid YAML at line ")
    assert "\n" not in reason and err == ""


def test_it_rejects_duplicate_keys_in_one_item(tmp_path):
    path = write(tmp_path, "handlers:\n  - {id: local.echo, credits: 1, credits: 2}\n")
    reason, _ = run_failing("import", path)
    assert "invalid YAML at line 2" in reason and "duplicate key 'credits'" in reason


def test_it_rejects_a_missing_file(tmp_path):
    reason, _ = run_failing("import", str(tmp_path / "absent.yaml"))
    assert reason == f"cannot read {tmp_path / 'absent.yaml'}: No such file or directory"


def test_it_rejects_a_file_that_is_not_a_catalog(tmp_path):
    _, err = run_failing("import", write(tmp_path, "- just\n- a list\n"))
    assert "line 1: the catalog must be a mapping" in err


def test_it_rejects_wrongly_typed_values_django_would_coerce():
    data = {"handlers": [{"id": "local.echo", "credits": True}], "offers": "nope"}
    report = catalog_import(data=data)
    assert [str(p) for p in report.problems] == [
        "offers: must be a list",
        "handlers[0] (local.echo): credits: must be an integer, not True",
    ]
    assert not ServiceHandler.objects.exists()


def test_the_demo_catalog_imports():
    path = Path(__file__).resolve().parents[2] / "api" / "demo_catalog.yaml"
    if not {"openai.chat", "http.post"} <= set(all_handlers()):
        pytest.skip("openai.chat / http.post are not registered yet")
    out, _ = run("import", str(path))
    assert "handlers: 4 created" in out and "offers: 7 created" in out
    assert "deals: 1 created" in out
    assert ServiceOffer.objects.get(service="text", action="slow").params == {"delay_seconds": 2}
    deal = ServiceDeal.objects.get(name="starter")
    assert [(i.offer.action, i.pipeline) for i in deal.ordered_items()] == [
        ("greet", ""),
        ("exclaim", "overwrite"),
        ("slow", ""),
    ]

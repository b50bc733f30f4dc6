"""The OpenAPI document (`/api/schema/`) and Swagger UI (`/api/docs/`): api/http/openapi.py."""

import base64
import hashlib
import re
import statistics
import time

import pytest
import yaml
from django.contrib.staticfiles import finders
from drf_spectacular.generators import EndpointEnumerator, SchemaGenerator
from jsonschema import Draft202012Validator
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from api import selectors
from api.http import openapi
from api.http.representations import deal_repr
from api.models import ServiceDeal, ServiceOffer
from api.services.catalog import catalog_import

pytestmark = pytest.mark.django_db

# Offers with inputs, one without, a pipeline step, an inactive one; a deal whose add-ons take
# inputs of their own (`volume` two of them, `text` and `tone` one each); a deal of an inactive
# offer, which is not on sale.
CATALOG = yaml.safe_load(
    """
handlers:
  - {id: local.echo, credits: 1}
offers:
  - {service: text, action: greet, price: 3, prompt_template: "Hello {name} from {place}",
     handler: local.echo, expiration: 3600, description: Greets someone}
  - {service: text, action: shout, price: 2, prompt_template: "{text}!", handler: local.echo,
     create_qty: 3}
  - {service: text, action: ping, price: 0, prompt_template: "pong", handler: local.echo}
  - {service: text, action: exclaim, price: 1, prompt_template: "{previous}!", handler: local.echo}
  - {service: text, action: loud, price: 4, prompt_template: "{text} at {volume}",
     handler: local.echo}
  - {service: text, action: whisper, price: 2, prompt_template: "at {volume}", handler: local.echo}
  - {service: text, action: tone, price: 1, prompt_template: "{tone}", handler: local.echo}
  - {service: img, action: secret, price: 1, prompt_template: "{x}", handler: local.echo,
     is_active: false}
deals:
  - name: starter
    offers:
      - {offer: text/greet, pipeline: null}
      - {offer: text/exclaim, pipeline: overwrite}
    price: null
    price_modifier: 10
    addons: [text/loud, text/whisper, text/tone]
    addons_modifier: 50
    description: A greeting, exclaimed
  - name: hidden
    offers: [{offer: img/secret, pipeline: null}]
    price: 5
"""
)


@pytest.fixture(autouse=True)
def fresh_documents():
    """Each test starts without a cached document (a test may change settings it reads)."""
    openapi.documents.forget()
    yield
    openapi.documents.forget()


@pytest.fixture
def catalog(db):
    report = catalog_import(data=CATALOG)
    assert not report.problems, report.problems


def document(client) -> dict:
    response = client.get("/api/schema/?format=json")
    assert response.status_code == 200, response.content
    return response.json()


BODY = ("post", "requestBody", "content", "application/json", "schema")


def body_schema(doc: dict, path: str) -> dict:
    node = doc["paths"][path]
    for part in BODY:
        node = node[part]
    return node


def resolved(doc: dict, node: dict) -> dict:
    """`node`, or what its `$ref` points to in `doc`."""
    while "$ref" in node:
        target = doc
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def validator_at(doc: dict, *where: str) -> Draft202012Validator:
    """Validates against the schema at `where` in `doc`, its references resolved in `doc`."""
    pointer = "/".join(part.replace("~", "~0").replace("/", "~1") for part in where)
    registry = Registry().with_resource("urn:doc", Resource(doc, DRAFT202012))
    return Draft202012Validator({"$ref": f"urn:doc#/{pointer}"}, registry=registry)


def answer_at(path: str, method: str, status: str) -> tuple[str, ...]:
    """Where the schema of an operation's JSON answer is."""
    return ("paths", path, method, "responses", status, "content", "application/json", "schema")


def test_the_document_is_valid_openapi_3_1(client, catalog):
    doc = document(client)

    assert doc["openapi"] == "3.1.0"
    validate(doc, cls=OpenAPIV31SpecValidator)


def test_each_active_offer_has_an_operation_taking_exactly_its_inputs(client, catalog):
    doc = document(client)

    offers = selectors.offer_list_active()
    assert len(offers) == 7
    for offer in offers:
        operation = doc["paths"][offer.endpoint]["post"]
        schema = body_schema(doc, offer.endpoint)
        assert operation["operationId"] == f"offer_{offer.service}_{offer.action}"
        assert operation["tags"] == [offer.service]
        assert set(schema["properties"]) == set(offer.inputs)
        assert schema["required"] == offer.inputs
        assert schema["additionalProperties"] is False
        credits = f"{offer.price} credit{'' if offer.price == 1 else 's'}"
        assert (
            credits in operation["summary"] and f"**Price: {credits}**" in operation["description"]
        )
    greet = resolved(doc, body_schema(doc, "/svc/text/greet/")["properties"]["name"])
    assert greet["type"] == ["string", "number", "boolean"] and greet["maxLength"] == 100_000
    assert "Results: 3 per request" in doc["paths"]["/svc/text/shout/"]["post"]["description"]


def test_the_generic_routes_give_way_to_the_catalogs_operations(client, catalog):
    doc = document(client)

    assert "/svc/{service}/{action}/" not in doc["paths"]
    assert "/svc/deal/{name}/" not in doc["paths"]
    assert "/svc/img/secret/" not in doc["paths"]  # inactive
    assert "/svc/deal/hidden/" not in doc["paths"]  # its offer is inactive
    assert "/svc/deal/starter/" in doc["paths"]


def test_a_deal_operation_takes_its_inputs_and_its_add_ons_with_theirs(client, catalog):
    doc = document(client)

    operation = doc["paths"]["/svc/deal/starter/"]["post"]
    schema = body_schema(doc, "/svc/deal/starter/")
    inputs = schema["properties"]["inputs"]
    assert operation["operationId"] == "deal_starter"
    assert set(inputs["properties"]) == {"name", "place", "text", "volume", "tone"}
    assert inputs["required"] == ["name", "place"] and inputs["additionalProperties"] is False
    assert schema["properties"]["addons"]["items"]["enum"] == [
        "text/loud",
        "text/whisper",
        "text/tone",
    ]
    assert schema["additionalProperties"] is False
    # 3 + 1 less 10 %, rounded half up: deal_repr's price.
    assert "**Price: 4 credits** (its offers' prices less 10%)" in operation["description"]
    assert "`text/loud` 2 credits" in operation["description"]
    assert deal_repr(ServiceDeal.objects.get(name="starter"))["price"] == 4


# Bodies for the deal above, each either bought or refused: the document must say the same.
DEAL_BODIES = [
    {"inputs": {"name": "a", "place": "b"}},
    {"inputs": {"name": "a", "place": "b"}, "addons": []},
    {"inputs": {"name": "a"}},
    {"inputs": {"name": "a", "place": "b", "text": "t"}},
    {"inputs": {"name": "a", "place": "b", "colour": "red"}},
    {"inputs": {"name": "a", "place": "b", "text": "t", "volume": 1}, "addons": ["text/loud"]},
    {"inputs": {"name": "a", "place": "b", "volume": 2.5}, "addons": ["text/whisper"]},
    {"inputs": {"name": "a", "place": "b", "volume": 1}, "addons": ["text/loud"]},
    {"inputs": {"name": "a", "place": "b", "text": "t", "volume": 1}, "addons": ["text/whisper"]},
    {
        "inputs": {"name": "a", "place": "b", "text": "t", "volume": True, "tone": "low"},
        "addons": ["text/tone", "text/loud", "text/whisper"],
    },
    {"inputs": {"name": "a", "place": "b", "tone": "low"}, "addons": ["text/tone", "text/tone"]},
    {"inputs": {"name": "a", "place": "b"}, "addons": ["text/nope"]},
    {"inputs": {"name": "a", "place": "b"}, "extra": 1},
    {"inputs": {"name": {"x": 1}, "place": "b"}},
    {"inputs": {"name": "a\u0000", "place": "b"}},
    {"inputs": {"name": 2**63, "place": "b"}},
    {"inputs": {"name": "abcdefghijk", "place": "b"}},  # past SVC_MAX_INPUT_CHARS below
    {},
]
OFFER_BODIES = [
    {"name": "a", "place": "b"},
    {"name": 1, "place": False},
    {"name": "a"},
    {"name": "a", "place": "b", "mood": "c"},
    {"name": ["a"], "place": "b"},
    {"name": None, "place": "b"},
    {"name": "abcdefghij", "place": "b"},
    {"name": "abcdefghijk", "place": "b"},
    {},
]


@pytest.mark.parametrize(
    "path, bodies", [("/svc/deal/starter/", DEAL_BODIES), ("/svc/text/greet/", OFFER_BODIES)]
)
def test_the_server_takes_exactly_the_bodies_the_document_describes(
    client, alice_api, catalog, settings, path, bodies
):
    settings.SVC_MAX_INPUT_CHARS = 10
    schema = validator_at(document(client), "paths", path, *BODY)

    for body in bodies:
        response = alice_api.post(path, body, format="json")
        assert response.status_code < 500, response.content
        assert schema.is_valid(body) == (response.status_code in (200, 202)), (
            body,
            response.json(),
        )


def test_answers_have_the_documented_shapes(client, alice_api, catalog, settings, fresh_fernet_key):
    doc = document(client)
    request_schema = validator_at(doc, "components", "schemas", "Request")
    documented = set(doc["components"]["schemas"]["Request"]["properties"])

    offer = alice_api.post("/svc/text/greet/", {"name": "a", "place": "b"}, format="json")
    deal = alice_api.post(
        "/svc/deal/starter/",
        {"inputs": {"name": "a", "place": "b", "tone": "x"}, "addons": ["text/tone"]},
        format="json",
    )
    answers = [
        offer.json(),
        deal.json(),
        alice_api.get(offer.json()["url"]).json(),
        alice_api.get(deal.json()["url"]).json(),
        alice_api.get(deal.json()["children"][1]["url"]).json(),
        alice_api.post(deal.json()["urls"]["cancel"]).json(),
    ]
    for answer in answers:
        request_schema.validate(answer)
        for shown in [answer, *answer["children"]]:
            assert set(shown) <= documented, set(shown) - documented
    for path in ("/svc/", "/svc/account/", "/svc/account/keys/"):
        validator_at(doc, *answer_at(path, "get", "200")).validate(alice_api.get(path).json())
    created = alice_api.post("/svc/account/keys/", {"name": "ci"}, format="json")
    validator_at(doc, *answer_at("/svc/account/keys/", "post", "201")).validate(created.json())
    key = alice_api.delete(f"/svc/account/keys/{created.json()['id']}/")
    validator_at(doc, *answer_at("/svc/account/keys/{key_id}/", "delete", "200")).validate(
        key.json()
    )
    settings.SVC_WEBHOOK_ALLOW_PRIVATE = True
    webhook = "/svc/account/webhook/"
    put = alice_api.put(webhook, {"url": "https://127.0.0.1:9/h"}, format="json")
    secret = alice_api.post("/svc/account/webhook_secret/")
    for answer, where in [
        (put, answer_at(webhook, "put", "200")),
        (alice_api.get(webhook), answer_at(webhook, "get", "200")),
        (secret, answer_at("/svc/account/webhook_secret/", "post", "201")),
        (alice_api.delete(webhook), answer_at(webhook, "delete", "200")),
    ]:
        assert answer.status_code == int(where[4]), answer.content
        validator_at(doc, *where).validate(answer.json())


def test_the_documents_offers_and_deals_are_the_public_catalogs(client, catalog):
    doc = document(client)
    listed = client.get("/svc/").json()

    sold = {
        path
        for path, item in doc["paths"].items()
        if item.get("post", {}).get("operationId", "").startswith(("offer_", "deal_"))
    }
    assert sold == {entry["url"] for entry in listed["offers"] + listed["deals"]}
    assert len(sold) == 8


def test_the_document_follows_catalog_edits_without_a_restart(client, catalog):
    before = document(client)
    greet = ServiceOffer.objects.get(service="text", action="greet")

    greet.prompt_template = "Hello {name} from {place} in a {mood} mood"
    greet.save()
    edited = document(client)
    greet.is_active = False
    greet.save()
    deactivated = document(client)
    catalog_import(data={**CATALOG, "deals": [{**CATALOG["deals"][0], "addons": ["text/tone"]}]})
    greet.is_active = True
    greet.save()
    reimported = document(client)

    assert body_schema(before, "/svc/text/greet/")["required"] == ["name", "place"]
    assert body_schema(edited, "/svc/text/greet/")["required"] == ["name", "place", "mood"]
    assert "/svc/text/greet/" not in deactivated["paths"]
    assert "/svc/deal/starter/" not in deactivated["paths"]  # one of its offers is inactive
    addons = body_schema(reimported, "/svc/deal/starter/")["properties"]["addons"]
    assert addons["items"]["enum"] == ["text/tone"]
    versions = [d["info"]["x-catalog-version"] for d in (before, edited, deactivated, reimported)]
    assert len(set(versions)) == 4


def test_a_deal_s_add_ons_edited_alone_change_the_document(client, catalog):
    before = document(client)
    deal = ServiceDeal.objects.get(name="starter")

    deal.addon_items.filter(offer__action="whisper").delete()  # no save of the deal itself
    after = document(client)

    assert (
        "text/whisper"
        in body_schema(before, "/svc/deal/starter/")["properties"]["addons"]["items"]["enum"]
    )
    assert (
        "text/whisper"
        not in body_schema(after, "/svc/deal/starter/")["properties"]["addons"]["items"]["enum"]
    )


def test_a_cached_document_is_not_generated_again_and_costs_four_queries(
    client, catalog, monkeypatch, django_assert_num_queries
):
    generated = []
    original = SchemaGenerator.get_schema

    def counting(self, *args, **kwargs):
        generated.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SchemaGenerator, "get_schema", counting)
    client.get("/api/schema/")
    client.get("/api/schema/?format=json")
    timings = []
    for fmt in ("yaml", "json") * 20:
        start = time.perf_counter()
        with django_assert_num_queries(4):  # catalog_version
            assert client.get(f"/api/schema/?format={fmt}").status_code == 200
        timings.append(time.perf_counter() - start)

    assert generated == [1]
    print(f"cached GET /api/schema/: median {statistics.median(timings) * 1000:.2f} ms")
    assert statistics.median(timings) < 0.05


def test_yaml_by_default_and_json_on_request(client, catalog):
    default = client.get("/api/schema/")
    by_accept = client.get("/api/schema/", HTTP_ACCEPT="application/json")
    by_query = client.get("/api/schema/?format=json")

    assert default["Content-Type"] == "application/vnd.oai.openapi; charset=utf-8"
    assert by_query["Content-Type"] == "application/vnd.oai.openapi+json"
    assert by_accept["Content-Type"] == "application/json"
    assert yaml.safe_load(default.content) == by_query.json() == by_accept.json()
    assert "/svc/text/greet/" in by_query.json()["paths"]


def test_the_schema_and_the_docs_are_public(anon_api, catalog):
    for path in ("/api/schema/", "/api/docs/"):
        assert anon_api.get(path).status_code == 200
        assert anon_api.get(path, HTTP_AUTHORIZATION="Bearer not-a-key").status_code == 200


def test_swagger_ui_loads_everything_from_this_origin(client, catalog):
    page = client.get("/api/docs/")
    html = page.content.decode()
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    script = client.get(next(u for u in urls if "script" in u).replace("&amp;", "&"))

    assert page.status_code == 200 and page["Content-Type"].startswith("text/html")
    assert urls and all(url.startswith("/") and not url.startswith("//") for url in urls)
    for url in urls:
        if url.startswith("/static/"):
            assert finders.find(url.removeprefix("/static/")), url
    assert "<script>" not in html  # the CSP allows no inline script
    style = re.search(r"<style>(.*?)</style>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(style.encode()).digest()).decode()
    policy = page["Content-Security-Policy"]
    assert f"'sha256-{digest}'" in re.search(r"style-src ([^;]*)", policy).group(1)
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert '"/api/schema/"' in script.content.decode()


def test_every_route_of_the_api_is_described(client, catalog):
    doc = document(client)
    described = {
        (re.sub(r"\{[^}]*\}", "{}", p), m) for p, item in doc["paths"].items() for m in item
    }

    for path, _regex, method, _view in EndpointEnumerator().get_api_endpoints():
        if not path.startswith(("/svc/", "/v1/")):
            continue  # /api/schema/ and /api/docs/ themselves
        route = (re.sub(r"\{[^}]*\}", "{}", path), method.lower())
        assert route in described or route in openapi.CATALOG_ROUTES, route
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            success = [resolved(doc, a) for s, a in operation["responses"].items() if s[0] == "2"]
            assert any("content" in a for a in success), (method, path)
            assert operation["security"] in ([], openapi.KEY_REQUIRED), (method, path)


def test_intake_operations_document_webhooks_waiting_and_idempotency(client, catalog):
    doc = document(client)
    operation = doc["paths"]["/svc/text/greet/"]["post"]
    parameters = {p["$ref"].rsplit("/", 1)[1] for p in operation["parameters"]}

    assert parameters == {"Webhook", "WebhookEvents", "Prefer", "IdempotencyKey"}
    assert resolved(doc, operation["responses"]["202"])["headers"]["Preference-Applied"]
    codes = {
        status: resolved(doc, answer)["content"]["application/json"]["schema"]["properties"][
            "error"
        ]["properties"]["code"]["enum"]
        for status, answer in operation["responses"].items()
        if not status.startswith("2")
    }
    assert {"idempotency_conflict", "idempotency_in_progress"} <= set(codes["409"])
    assert "invalid_webhook" in codes["400"]
    assert set(operation["responses"]) >= {
        "200",
        "202",
        "400",
        "401",
        "402",
        "404",
        "409",
        "413",
        "429",
        "503",
    }
    events = doc["paths"]["/svc/request/{request_id}/events/"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert doc["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"

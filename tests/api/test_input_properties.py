"""Properties of intake input (hypothesis): request ids are canonical, and no body, however
hostile, gets a 5xx or changes anything unless it is accepted."""

import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from api.models import ServiceDeal, ServiceDealItem
from api.services.deals import deal_dedupe_key
from api.services.requests import dedupe_key
from tests.api.test_hostile_input import state

# Modest counts keep each property to a few seconds; no example database in the tree.
PROPERTIES = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- canonical request ids ------------------------------------------------------------------

# Strict JSON, as the intake lets it through: finite numbers, text without lone surrogates.
strict_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
strict_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | strict_text
)
strict_values = st.recursive(
    strict_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(strict_text, inner, max_size=4),
    max_leaves=8,
)
strict_inputs = st.dictionaries(strict_text, strict_values, min_size=1, max_size=5)


def reordered(value):
    """The same JSON value with every object's keys in the reverse order."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


def json_identity(value):
    """What makes two JSON values the same: their type (true is not 1, 1 is not 1.0) and
    content as written (0.0 is not -0.0), key order aside."""
    if isinstance(value, dict):
        return ("object", frozenset((k, json_identity(v)) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", tuple(json_identity(item) for item in value))
    return (type(value).__name__, repr(value))


def key_of(inputs: dict, user_id: int = 7) -> str:
    return dedupe_key(user_id=user_id, service="text", action="greet", inputs=inputs)


@PROPERTIES
@given(inputs=strict_inputs)
def test_equal_inputs_have_one_id_whatever_their_key_order(inputs):
    assert key_of(reordered(inputs)) == key_of(inputs)
    assert key_of(json.loads(json.dumps(inputs))) == key_of(inputs)  # sent and read back
    assert key_of(inputs, user_id=8) != key_of(inputs)  # another client's is another


@PROPERTIES
@given(inputs=strict_inputs, data=st.data())
def test_inputs_that_differ_in_any_value_have_different_ids(inputs, data):
    name = data.draw(st.sampled_from(sorted(inputs)))
    other = data.draw(strict_values)
    changed = {**inputs, name: other}
    if json_identity(other) == json_identity(inputs[name]):
        assert key_of(changed) == key_of(inputs)
    else:
        assert key_of(changed) != key_of(inputs)


@PROPERTIES
@given(addons=st.lists(strict_text, unique=True, max_size=5), data=st.data())
def test_the_order_a_deal_names_its_add_ons_in_does_not_change_its_id(addons, data):
    shuffled = data.draw(st.permutations(addons))
    one = deal_dedupe_key(user_id=7, deal="duo", addons=addons, inputs={"name": "Ada"})
    assert deal_dedupe_key(user_id=7, deal="duo", addons=shuffled, inputs={"name": "Ada"}) == one


# --- no body gets a 5xx or changes anything unless accepted ---------------------------------

# Anything json.dumps can write, and more: NaN and infinities, lone surrogates (escaped as
# \udxxx), integers past 64 bits, NUL, long strings.
hostile_text = st.text(
    st.characters(categories=["Cs"]) | st.characters() | st.sampled_from('\x00"\\'),
    max_size=12,
) | st.builds(lambda n: "A" * n, st.integers(99_990, 100_010))
hostile_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()  # nan and ±inf included
    | st.sampled_from([1e308, -1e308, 0.0, -0.0])
    | hostile_text
)
hostile_values = st.recursive(
    hostile_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(hostile_text, inner, max_size=4),
    max_leaves=10,
)


def dumps(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()  # ASCII: lone surrogates as escapes


def nesting(depth: int, open_: str) -> bytes:
    close = {"[": "]", '{"a":': "}"}[open_]
    return (open_ * depth + "1" + close * depth).encode()


offer_bodies = st.fixed_dictionaries(
    {"name": hostile_scalars, "place": hostile_scalars},
    optional={"extra": hostile_values},
).map(dumps)
deal_bodies = st.fixed_dictionaries(
    {"inputs": st.fixed_dictionaries({"name": hostile_scalars}) | hostile_values},
    optional={"addons": st.lists(hostile_text, max_size=3) | hostile_values},
).map(dumps)
# Mostly acceptable offer bodies, so that accepted requests are checked too.
plain_bodies = st.fixed_dictionaries({"name": strict_scalars, "place": strict_scalars}).map(dumps)
bodies = (
    plain_bodies
    | offer_bodies
    | deal_bodies
    | hostile_values.map(dumps)
    | st.builds(nesting, st.integers(0, 2_000), st.sampled_from(["[", '{"a":']))
    | st.binary(max_size=64)
    | offer_bodies.map(lambda body: body[:-1] + b"\xff}")  # a byte that is not UTF-8
)


@pytest.fixture
def duo(make_offer) -> ServiceDeal:
    hello = make_offer("text", "hello", prompt_template="Hello {name}", price=1)
    deal = ServiceDeal.objects.create(name="duo")
    ServiceDealItem.objects.create(deal=deal, offer=hello, position=0, pipeline="")
    return deal


@PROPERTIES
@given(path=st.sampled_from(["/svc/text/greet/", "/svc/deal/duo/"]), body=bodies)
def test_no_body_gets_a_5xx_and_a_refused_one_changes_nothing(
    alice, alice_api, greet_offer, duo, path, body
):
    before = state(alice)
    response = alice_api.generic("POST", path, body, content_type="application/json")
    assert response.status_code < 500, (body[:200], response.content[:300])
    answer = response.json()  # every answer is JSON, errors included
    event(f"HTTP {response.status_code}")
    if response.status_code >= 400:
        assert set(answer) == {"error"} and answer["error"]["code"]
        assert state(alice) == before, body[:200]
        return
    read = alice_api.get(answer["url"])  # accepted: readable, now and later
    assert read.status_code == 200 and read.json()["id"] == answer["id"]

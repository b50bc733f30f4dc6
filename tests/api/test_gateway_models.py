"""The gateway's models (`/v1/models`), read with the official `openai` SDK against the API on
a real loopback server: an offer with a `model_name` is a model for the keys that may call it,
and errors come in OpenAI's shape, as the exceptions the SDK raises for them."""

import openai
import pytest

from api.models import ServiceOffer
from api.services.catalog import catalog_export, catalog_import
from api.services.keys import key_create

pytestmark = pytest.mark.django_db(transaction=True)  # the server thread reads the rows


@pytest.fixture
def models(make_offer):
    make_offer(service="chat", action="small", model_name="acme/small-1")
    make_offer(service="chat", action="large", model_name="acme/large-1")
    make_offer(service="chat", action="retired", model_name="acme/old", is_active=False)
    make_offer(service="text", action="plain")  # not a model


def sdk(live_server, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key=secret, max_retries=0)


def test_the_sdk_lists_the_active_models_a_key_may_call(live_server, alice, models):
    everything = key_create(user=alice, name="all")
    small_only = key_create(user=alice, name="small", allowed=["chat/small"])
    listed = [m.id for m in sdk(live_server, everything.secret).models.list()]
    assert listed == ["acme/large-1", "acme/small-1"]
    assert [m.id for m in sdk(live_server, small_only.secret).models.list()] == ["acme/small-1"]
    model = sdk(live_server, everything.secret).models.retrieve("acme/small-1")
    assert (model.id, model.object, model.owned_by) == ("acme/small-1", "model", "svc-marketplace")


def test_a_model_the_key_may_not_use_is_not_found_in_openais_shape(live_server, alice, models):
    small_only = key_create(user=alice, name="small", allowed=["chat/small"])
    for name in ("acme/large-1", "acme/old", "nope"):
        with pytest.raises(openai.NotFoundError) as raised:
            sdk(live_server, small_only.secret).models.retrieve(name)
        error = raised.value.body
        assert error["code"] == "model_not_found" and error["param"] == "model"
        assert error["type"] == "invalid_request_error" and name in error["message"]


def test_a_bad_key_is_an_authentication_error(live_server, models):
    with pytest.raises(openai.AuthenticationError) as raised:
        sdk(live_server, "svc_live_nope").models.list()
    assert raised.value.body["code"] == "invalid_api_key"
    assert raised.value.response.headers["www-authenticate"].startswith("Bearer")


def test_model_name_is_in_the_catalog_file_and_unique(alice, models):
    exported = catalog_export()
    names = {o["model_name"] for o in exported["offers"] if "model_name" in o}
    assert names == {"acme/small-1", "acme/large-1", "acme/old"}
    assert "model_name" not in next(o for o in exported["offers"] if o["action"] == "plain")
    twice = {
        "handlers": [{"id": "local.echo", "credits": 1}],
        "offers": [
            {
                "service": "a",
                "action": "one",
                "price": 1,
                "prompt_template": "{x}",
                "handler": "local.echo",
                "model_name": "dup",
            },
            {
                "service": "a",
                "action": "two",
                "price": 1,
                "prompt_template": "{x}",
                "handler": "local.echo",
                "model_name": "dup",
            },
        ],
    }
    report = catalog_import(data=twice)
    assert not report.ok
    assert any("model_name 'dup' is also" in str(problem) for problem in report.problems)
    assert not ServiceOffer.objects.filter(model_name="dup").exists()

from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from mongoengine.connection import get_db
from rest_framework.test import APIClient

from api.documents import ServiceRequest
from api.models import ServiceHandler, ServiceOffer
from api.services.accounts import account_grant
from api.services.keys import key_create
from configs import keys
from configs import live as config_live
from configs import store as config_store
from executor import breaker
from infra.stores import redis_connection
from recon import usage

# The loopback stub servers (upstreams, Fluentd, alert webhooks) every test directory uses.
pytest_plugins = ["tests.stubs.fixtures"]


SYSTEM_TESTS = Path(__file__).resolve().parent / "system"


@pytest.fixture(scope="session")
def django_db_modify_db_settings_xdist_suffix():
    """pytest-django gives each xdist worker's test database a suffix (`_gw0`); the executor
    and recon processes a test starts would then open another, empty, file. Each worker has
    a DATA_DIR of its own already (marketplace/pytest_plugin.py), so no suffix is needed."""


def pytest_collection_modifyitems(items):
    """Every test under tests/system/ is a `system` test (`make test-fast` deselects them)."""
    for item in items:
        if SYSTEM_TESTS in Path(item.fspath).parents:
            item.add_marker(pytest.mark.system)


@pytest.fixture(autouse=True)
def clean_stores():
    """Each test starts with empty request documents, no configs, no hourly usage and an empty
    Redis."""
    ServiceRequest.drop_collection()
    ServiceRequest.ensure_indexes()
    for collection in config_store.COLLECTIONS:
        get_db().drop_collection(collection)
    get_db().drop_collection(usage.COLLECTION)
    config_live.forget()
    redis_connection().flushdb()
    breaker.forget()
    yield


@pytest.fixture
def fresh_fernet_key(monkeypatch) -> str:
    """A new CONFIG_FERNET_KEY (the shipped bootstrap's key) in this process's environment,
    which the executor processes a test starts inherit."""
    key = Fernet.generate_key().decode()
    monkeypatch.setenv(keys.KEY_ENV, key)
    return key


def _client_for(user) -> APIClient:
    client = APIClient()
    created = key_create(user=user, name="tests", can_manage_keys=True)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {created.secret}")
    client.user = user
    client.key = created.key
    client.secret = created.secret
    return client


@pytest.fixture
def alice(django_user_model):
    user = django_user_model.objects.create_user("alice")
    account_grant(user=user, amount=1000, note="test")
    return user


@pytest.fixture
def bob(django_user_model):
    user = django_user_model.objects.create_user("bob")
    account_grant(user=user, amount=1000, note="test")
    return user


@pytest.fixture
def alice_api(alice) -> APIClient:
    return _client_for(alice)


@pytest.fixture
def bob_api(bob) -> APIClient:
    return _client_for(bob)


@pytest.fixture
def anon_api() -> APIClient:
    return APIClient()


@pytest.fixture
def echo_handler(db) -> ServiceHandler:
    return ServiceHandler.objects.create(id="local.echo", credits=1)


@pytest.fixture
def greet_offer(echo_handler) -> ServiceOffer:
    return ServiceOffer.objects.create(
        service="text",
        action="greet",
        price=3,
        prompt_template="Hello {name} from {place}",
        handler=echo_handler,
        create_qty=1,
        params={},
    )


@pytest.fixture
def make_offer(db):
    def make(service="text", action="act", handler="local.echo", prompt_template="{x}", **fields):
        handler_row, _ = ServiceHandler.objects.get_or_create(id=handler, defaults={"credits": 1})
        fields.setdefault("price", 1)
        return ServiceOffer.objects.create(
            service=service,
            action=action,
            handler=handler_row,
            prompt_template=prompt_template,
            **fields,
        )

    return make

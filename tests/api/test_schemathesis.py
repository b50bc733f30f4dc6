"""Schemathesis against the API's own OpenAPI document (`/api/schema/`): every operation the
document describes, the catalog's included, called in process (WSGI) with generated inputs
and a key of a client with credits; no answer may be a 5xx, or have a status, a Content-Type,
a body or a header that the operation does not document."""

import hypothesis
import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, given
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.keys import ApiKey
from api.services.accounts import account_grant
from api.services.catalog import catalog_import
from api.services.keys import key_create
from tests.api.test_openapi import CATALOG, fresh_documents  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
# The webhook a generated intake names: an address literal, so that nothing is looked up in
# DNS; taken with SVC_WEBHOOK_ALLOW_PRIVATE and stored (no webhook worker runs here).
WEBHOOK = "https://127.0.0.1:9/hook"


class Keys:
    """The client's key for each call: a generated `DELETE /svc/account/keys/<id>/` may
    revoke the one in use (ids are small numbers), so a revoked key is replaced."""

    def __init__(self, user):
        self.user = user
        self.created = key_create(user=user, name="schemathesis", can_manage_keys=True)

    def header(self) -> str:
        if not ApiKey.objects.filter(pk=self.created.key.pk, revoked_at=None).exists():
            self.created = key_create(user=self.user, name="schemathesis", can_manage_keys=True)
        return f"Bearer {self.created.secret}"


@pytest.fixture
def keys(django_user_model):
    user = django_user_model.objects.create_user("carol")
    account_grant(user=user, amount=10**9, note="schemathesis")
    return Keys(user)


@pytest.fixture
def in_test_transaction():
    """Django's WSGI handler closes the database connection after each request: the test's
    transaction would go with it (Django's test client disconnects the same handler)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def api_schema(db, keys, in_test_transaction):
    report = catalog_import(data=CATALOG)
    assert not report.problems
    return schemathesis.openapi.from_wsgi("/api/schema/?format=json", get_wsgi_application())


# Per operation (there are ~20): bounded so that the file runs in well under a minute.
EXAMPLES = hypothesis.settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def test_the_api_keeps_to_its_document(api_schema, keys, settings, fresh_fernet_key):
    """One hypothesis run per operation (schemathesis' `from_fixture` fails on this pytest:
    it sets `Function._nodeid`); the failures of all of them are reported together."""
    settings.SVC_WEBHOOK_ALLOW_PRIVATE = True  # WEBHOOK is taken, and signed (the Fernet key)
    operations = [result.ok() for result in api_schema.get_all_operations()]
    failures = {}
    for operation in operations:

        @EXAMPLES
        @given(case=operation.as_strategy())
        def calls(case):
            if case.query and "webhook" in case.query:
                case.query["webhook"] = WEBHOOK
            case.call_and_validate(headers={"Authorization": keys.header()}, checks=CHECKS)

        try:
            calls()
        except (Exception, FailureGroup) as exc:  # a FailureGroup is a BaseExceptionGroup
            failures[operation.label] = exc
    assert len(operations) >= 20
    if failures:
        report = "\n\n".join(f"{label}: {exc}" for label, exc in failures.items())
        pytest.fail(report, pytrace=False)

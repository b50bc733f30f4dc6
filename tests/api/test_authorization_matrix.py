"""Who may call what: every HTTP endpoint for every persona, one expected status each.

Personas: anonymous; alice (the owner: her key may manage keys); alice's limited key (may not
manage keys, may call only text/*); bob (another client); alice's revoked key; alice's
expired key; an operator logged into the admin (sessions never authenticate the API); the
metrics scraper (SVC_METRICS_TOKEN). The admin pages have their own matrix
(test_admin_roles.py). Any status other than the table's fails.
"""

from datetime import timedelta

import pytest
from django.conf import settings
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from api.models import ServiceDeal, ServiceDealItem
from api.services.keys import key_create, key_revoke

pytestmark = pytest.mark.django_db

PERSONAS = ["anonymous", "alice", "alice_limited", "bob", "revoked", "expired", "staff", "scraper"]

# (method, path, body) → expected status per persona, in PERSONAS' order. {request} is one of
# alice's requests, {key} one of alice's keys (not the one calling).
MATRIX = [
    ("GET", "/svc/", None, [200, 200, 200, 200, 200, 200, 200, 200]),
    ("POST", "/svc/text/greet/", {"name": "x"}, [401, 202, 202, 202, 401, 401, 401, 401]),
    ("POST", "/svc/image/draw/", {"x": "y"}, [401, 202, 403, 202, 401, 401, 401, 401]),
    (
        "POST",
        "/svc/deal/starter/",
        {"inputs": {"name": "x"}},
        [401, 202, 403, 202, 401, 401, 401, 401],
    ),
    ("GET", "/svc/request/{request}/", None, [401, 200, 200, 404, 401, 401, 401, 401]),
    ("POST", "/svc/request/{request}/cancel/", None, [401, 200, 200, 404, 401, 401, 401, 401]),
    ("GET", "/svc/account/", None, [401, 200, 200, 200, 401, 401, 401, 401]),
    ("GET", "/svc/account/keys/", None, [401, 200, 403, 200, 401, 401, 401, 401]),
    ("POST", "/svc/account/keys/", {"name": "n"}, [401, 201, 403, 201, 401, 401, 401, 401]),
    ("GET", "/svc/account/keys/{key}/", None, [401, 200, 403, 404, 401, 401, 401, 401]),
    ("DELETE", "/svc/account/keys/{key}/", None, [401, 200, 403, 404, 401, 401, 401, 401]),
    ("GET", "/healthz", None, [200, 200, 200, 200, 200, 200, 200, 200]),
    ("GET", "/metrics", None, [403, 403, 403, 403, 403, 403, 403, 200]),
]
CASES = [
    pytest.param(method, path, body, persona, expected, id=f"{method} {path} as {persona}")
    for method, path, body, statuses in MATRIX
    for persona, expected in zip(PERSONAS, statuses, strict=True)
]


def bearer(secret: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    return client


@pytest.fixture
def world(alice, bob, django_user_model, make_offer):
    greet = make_offer(service="text", action="greet", prompt_template="Hi {name}")
    make_offer(service="image", action="draw", prompt_template="{x}")
    deal = ServiceDeal.objects.create(name="starter", price=2)
    ServiceDealItem.objects.create(deal=deal, offer=greet, position=0)
    owner = bearer(key_create(user=alice, name="owner", can_manage_keys=True).secret)
    request = owner.post("/svc/text/greet/", {"name": "mine"}, format="json").json()["id"]
    target = key_create(user=alice, name="target").key
    revoked = key_create(user=alice, name="revoked", can_manage_keys=True)
    key_revoke(key=revoked.key)
    expired = key_create(
        user=alice,
        name="expired",
        can_manage_keys=True,
        expires_at=timezone.now() + timedelta(seconds=30),
    )
    expired.key.expires_at = timezone.now() - timedelta(seconds=1)
    expired.key.save()
    staff = Client()  # no password: a hash costs half a second per test
    staff.force_login(
        django_user_model.objects.create(username="op", is_staff=True, is_superuser=True)
    )
    return {
        "ids": {"request": request, "key": target.pk},
        "anonymous": APIClient(),
        "alice": owner,
        "alice_limited": bearer(key_create(user=alice, name="l", allowed=["text/*"]).secret),
        "bob": bearer(key_create(user=bob, name="bob", can_manage_keys=True).secret),
        "revoked": bearer(revoked.secret),
        "expired": bearer(expired.secret),
        "staff": staff,
        "scraper": bearer(settings.SVC_METRICS_TOKEN),
    }


@pytest.mark.parametrize("method, path, body, persona, expected", CASES)
def test_the_authorization_matrix(world, method, path, body, persona, expected):
    client = world[persona]
    url = path.format(**world["ids"])
    response = getattr(client, method.lower())(url, body, format="json")
    assert response.status_code == expected, (persona, url, response.content[:300])
    if response.status_code >= 400 and path != "/metrics":
        assert "code" in response.json()["error"]
    if path.startswith("/svc/") and path != "/svc/":
        assert response["Cache-Control"] == "no-store"

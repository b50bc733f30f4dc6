"""Standard Webhooks signatures: what we sign verifies with the `standardwebhooks` library."""

import base64
import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from webhooks import signing

BODY = '{"type":"request.completed","data":{"id":"r1","text":"naïve"}}'


def test_a_secret_is_whsec_and_32_random_bytes():
    first, second = signing.new_secret(), signing.new_secret()

    assert first.startswith("whsec_") and first != second
    assert len(base64.b64decode(first.removeprefix("whsec_"))) == 32


def test_the_headers_verify_with_the_library():
    secret = signing.new_secret()
    headers = signing.headers(
        signing_secrets=[secret], webhook_id="msg_1", timestamp=int(time.time()), body=BODY
    )

    assert Webhook(secret).verify(BODY.encode(), headers)["data"]["text"] == "naïve"
    assert headers["webhook-signature"].startswith("v1,")


def test_two_secrets_give_two_signatures_each_verifying_with_its_own():
    old, new = signing.new_secret(), signing.new_secret()
    headers = signing.headers(
        signing_secrets=[new, old], webhook_id="msg_1", timestamp=int(time.time()), body=BODY
    )

    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(old).verify(BODY, headers)
    Webhook(new).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(signing.new_secret()).verify(BODY, headers)


def test_a_changed_body_or_id_does_not_verify():
    secret = signing.new_secret()
    headers = signing.headers(
        signing_secrets=[secret], webhook_id="msg_1", timestamp=int(time.time()), body=BODY
    )

    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace("r1", "r2"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "msg_2"})

"""Standard Webhooks signatures (https://www.standardwebhooks.com): what a receiver checks to
know a delivery is ours and unaltered.

A secret is `whsec_` + base64 of 32 random bytes. Each attempt sends

    webhook-id: msg_…                the delivery's, the same on every attempt
    webhook-timestamp: 1700000000    this attempt's, unix seconds
    webhook-signature: v1,<base64 HMAC-SHA256(secret bytes, f"{id}.{timestamp}.{body}")>

and, while a rotation's previous secret still signs, a second `v1,…` after a space: a
receiver verifying with either secret accepts it. The HMAC is the `standardwebhooks`
library's own (`Webhook.sign`), so what we send is what its `verify` checks.
"""

import base64
from datetime import UTC, datetime
from secrets import token_bytes

from standardwebhooks.webhooks import Webhook

from webhooks import defaults


def new_secret() -> str:
    raw = token_bytes(defaults.SECRET_BYTES)
    return defaults.SECRET_PREFIX + base64.b64encode(raw).decode()


def signature(*, signing_secrets: list[str], webhook_id: str, timestamp: int, body: str) -> str:
    """The `webhook-signature` value: one `v1,…` per secret, separated by spaces."""
    at = datetime.fromtimestamp(timestamp, tz=UTC)
    return " ".join(
        Webhook(secret).sign(msg_id=webhook_id, timestamp=at, data=body)
        for secret in signing_secrets
    )


def headers(
    *, signing_secrets: list[str], webhook_id: str, timestamp: int, body: str
) -> dict[str, str]:
    """The three Standard Webhooks headers of one attempt."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(
            signing_secrets=signing_secrets, webhook_id=webhook_id, timestamp=timestamp, body=body
        ),
    }

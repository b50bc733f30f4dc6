"""The client's webhook endpoints (docs/api.md, "Webhooks"):

- `POST /svc/account/webhook_secret/`: a new signing secret, answered this once (201);
- `GET/PUT/DELETE /svc/account/webhook/`: the account's default webhook.

Reading the default needs any of the client's keys; changing it or the secret needs a key
with `can_manage_keys`, like the keys themselves: the secret is a credential, and the default
decides where every request's results go.
"""

from rest_framework import serializers
from rest_framework.response import Response

from api.errors import ApplicationError
from api.http.body import read_json_object
from api.http.views import ClientView, max_body_bytes
from api.services.keys import key_require_manager
from api.shapes import iso
from webhooks import defaults
from webhooks.services import (
    webhook_previous_valid_until,
    webhook_secret_rotate,
    webhook_settings_clear,
    webhook_settings_get,
    webhook_settings_set,
)


class StringField(serializers.CharField):
    """A JSON string only (DRF's CharField takes 7 for "7")."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class WebhookSettingsInput(serializers.Serializer):
    """The shape only; the URL and the event names are checked by the service (invalid_webhook)."""

    url = StringField(max_length=defaults.MAX_URL_LENGTH, trim_whitespace=False)
    events = serializers.ListField(child=StringField(max_length=40), max_length=10, required=False)


class WebhookSecretView(ClientView):
    def post(self, request):
        key_require_manager(request.auth)
        secret = webhook_secret_rotate(user=request.user)
        until = webhook_previous_valid_until(user=request.user)
        return Response(
            {"secret": secret, "previous_valid_until": iso(until)},
            status=201,
        )


class WebhookSettingsView(ClientView):
    def get(self, request):
        return Response(webhook_settings_get(user=request.user))

    def put(self, request):
        key_require_manager(request.auth)
        body = read_json_object(request, limit=max_body_bytes())
        unknown = sorted(set(body) - set(WebhookSettingsInput().fields))
        if unknown:
            raise ApplicationError(
                "invalid_inputs",
                f"unknown field {unknown[0]!r}: give url and events",
                fields=unknown,
            )
        given = WebhookSettingsInput(data=body)
        if not given.is_valid():
            name, problems = next(iter(given.errors.items()))
            raise ApplicationError(
                "invalid_inputs", f"{name}: {problems[0]}", fields=sorted(given.errors)
            )
        return Response(webhook_settings_set(user=request.user, **given.validated_data))

    def delete(self, request):
        key_require_manager(request.auth)
        return Response(webhook_settings_clear(user=request.user))

"""Input serializers: what a JSON body must hold before a service sees it. Their errors leave
the API as `400 invalid_inputs` with the offending fields (errors.py)."""

from rest_framework import serializers

from api.keys import PERIODS, validate_patterns

# Longest life a key can be given at creation (ten years): "never" is an empty value.
MAX_KEY_DAYS = 3650


class KeyCreateInput(serializers.Serializer):
    name = serializers.CharField(max_length=100)
    can_manage_keys = serializers.BooleanField(default=False)
    allowed = serializers.ListField(
        child=serializers.CharField(max_length=120), default=list, max_length=50
    )
    budget = serializers.IntegerField(min_value=1, max_value=10**15, required=False)
    budget_period = serializers.ChoiceField(choices=PERIODS, default="month")
    rate_per_minute = serializers.IntegerField(min_value=1, max_value=10**6, required=False)
    max_in_flight = serializers.IntegerField(min_value=1, max_value=10**6, required=False)
    expires_in_days = serializers.IntegerField(min_value=1, max_value=MAX_KEY_DAYS, required=False)

    def validate_allowed(self, value):
        try:
            validate_patterns(value)
        except Exception as exc:  # django's ValidationError → DRF's
            raise serializers.ValidationError(getattr(exc, "messages", [str(exc)])) from None
        return value

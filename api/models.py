"""Catalog (handlers, offers, deals) and client accounts. Requests live in MongoDB
(api/documents.py)."""

import re

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models

from api import deal_rules, defaults
from api.keys import ApiKey  # noqa: F401 (a model of this app, defined beside its format)
from api.prompt_templates import TemplateError, template_fields
from executor import credentials
from executor.handlers import all_handlers
from executor.queues import route_for_handler

# Service slugs that would shadow the API's own routes under /svc/.
RESERVED_SERVICES = frozenset({"request", "deal", "account"})


def validate_handler_id(value: str) -> None:
    if value not in all_handlers():
        known = ", ".join(all_handlers()) or "none"
        raise ValidationError(f"no handler {value!r} is registered (registered: {known})")


def validate_service_slug(value: str) -> None:
    if value in RESERVED_SERVICES:
        raise ValidationError(f"{value!r} is reserved by the API; pick another service name")


def validate_prompt_template(value: str) -> None:
    try:
        template_fields(value)
    except TemplateError as exc:
        raise ValidationError(str(exc)) from None


def validate_params(value) -> None:
    if not isinstance(value, dict):
        raise ValidationError("params must be a JSON object")


FALLBACK_KEYS = ("handler", "params", "credentials", "resource")
RESOURCE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def validate_credential_name(value: str) -> None:
    """A credential set of the active `service_map` config (executor/credentials.py)."""
    if not value:
        return
    if not re.fullmatch(credentials.NAME_PATTERN, value):
        raise ValidationError(f"{value!r} is not a credential set name (letters, digits, . _ -)")
    known = credentials.credential_sets()
    if value not in known:
        names = ", ".join(sorted(known)) or "none"
        raise ValidationError(
            f"no credential set {value!r} in the active service_map config (sets: {names}); "
            "add it with `manage.py config upload` first"
        )


def validate_fallbacks(value) -> None:
    """A list of handler ids or {handler, params?, credentials?} mappings (see normalized)."""
    if not isinstance(value, list):
        raise ValidationError('fallbacks must be a JSON list, e.g. ["http.post"]')
    if len(value) > defaults.MAX_FALLBACKS:
        raise ValidationError(f"at most {defaults.MAX_FALLBACKS} fallbacks")
    for index, entry in enumerate(value):
        _check_fallback(f"fallbacks[{index}]", entry)


def _check_fallback(where: str, entry) -> None:
    if isinstance(entry, str):
        entry = {"handler": entry}
    if not isinstance(entry, dict):
        raise ValidationError(
            f"{where}: a handler id or a mapping with handler, params, credentials"
        )
    unknown = sorted(set(entry) - set(FALLBACK_KEYS))
    if unknown:
        raise ValidationError(f"{where}: unknown keys {', '.join(unknown)}")
    handler_id = entry.get("handler")
    if not isinstance(handler_id, str) or not handler_id:
        raise ValidationError(f"{where}: handler is required")
    try:
        validate_handler_id(handler_id)
    except ValidationError as exc:
        raise ValidationError(f"{where}: {exc.messages[0]}") from None
    if "params" in entry and not isinstance(entry["params"], dict):
        raise ValidationError(f"{where}: params must be a JSON object")
    if "resource" in entry and (
        not isinstance(entry["resource"], str) or not RESOURCE_NAME.match(entry["resource"])
    ):
        raise ValidationError(
            f"{where}: resource must be a resource name (letters, digits, _ and -)"
        )
    if "credentials" in entry:
        if not isinstance(entry["credentials"], str):
            raise ValidationError(f"{where}: credentials must be a credential set name")
        try:
            validate_credential_name(entry["credentials"])
        except ValidationError as exc:
            raise ValidationError(f"{where}: {exc.messages[0]}") from None


def fallbacks_without_rows(value, defined: set) -> list[str]:
    """Fallback handler ids that have no ServiceHandler row among `defined` (their credits
    would be unknown). Checked where the rows are known: the admin form, catalog import."""
    entries = normalized_fallbacks(value) if isinstance(value, list) else []
    ids = [e.get("handler") for e in entries if isinstance(e, dict)]
    return [h for h in ids if isinstance(h, str) and h and h not in defined]


def normalized_fallbacks(value) -> list:
    """Fallbacks as mappings ("http.post" → {"handler": "http.post"}); invalid ones as given."""
    if not isinstance(value, list):
        return value
    return [{"handler": entry} if isinstance(entry, str) else entry for entry in value]


class ServiceHandler(models.Model):
    id = models.CharField(
        primary_key=True,
        max_length=100,
        validators=[validate_handler_id],
        help_text="<module>.<method> of a handler in executor/handlers/",
    )
    credits = models.PositiveIntegerField(
        default=0, help_text="Internal usage cost of one call (integration credits)"
    )
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]
        verbose_name = "service handler"

    def __str__(self) -> str:
        return self.id


class ServiceOffer(models.Model):
    service = models.SlugField(max_length=50, validators=[validate_service_slug])
    action = models.SlugField(max_length=50)
    price = models.PositiveIntegerField(help_text="Platform fee (credits) charged per request")
    prompt_template = models.TextField(
        validators=[validate_prompt_template],
        help_text="Python str.format with plain {names}; each name is a required input",
    )
    handler = models.ForeignKey(ServiceHandler, on_delete=models.PROTECT, related_name="offers")
    create_qty = models.PositiveIntegerField(
        default=1,
        validators=[MinValueValidator(1), MaxValueValidator(defaults.MAX_CREATE_QTY)],
        help_text="Number of results to generate (handler calls per request)",
    )
    expiration = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Seconds a request may take from intake before it ends expired; "
        "also how long an identical request is answered with this one",
    )
    params = models.JSONField(
        default=dict,
        blank=True,
        validators=[validate_params],
        help_text="JSON object passed to the handler",
    )
    description = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True, help_text="Inactive offers answer 404")
    max_retries = models.PositiveSmallIntegerField(
        null=True,
        blank=True,
        validators=[MaxValueValidator(defaults.MAX_RETRIES)],
        help_text="Retries per call after a retryable upstream failure (timeout, connection "
        "error, 429, 5xx); empty: the resource's default (resource map max_retries, else 2)",
    )
    fallbacks = models.JSONField(
        default=list,
        blank=True,
        validators=[validate_fallbacks],
        help_text="Handlers tried in order when this one's breaker is open or its retries are "
        'spent, e.g. ["http.post"] or [{"handler": "openai.chat", "credentials": "backup", '
        '"params": {...}, "resource": "openai-backup"}] (params default to the offer\'s; '
        "resource: its own limits and circuit breaker); charged the offer's price",
    )
    credentials = models.CharField(
        max_length=64,
        blank=True,
        default="",
        validators=[validate_credential_name],
        help_text="A credential set of the service_map config overriding the handler's "
        "default (e.g. a second account of the same provider); empty: the handler's",
    )
    model_name = models.CharField(
        max_length=100,
        unique=True,
        null=True,
        blank=True,
        default=None,
        validators=[
            RegexValidator(
                r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$",
                "letters, digits and . _ : / - (starting with a letter or digit)",
            )
        ],
        help_text="Exposes the offer as this model on the OpenAI-compatible gateway "
        "(GET /v1/models lists it to the keys allowed to call the offer); empty: not a model",
    )
    # Metered prices (gateway calls, api/metering.py): on top of `price`, credits per 1,000
    # input and output tokens, the sum rounded up once per request.
    price_per_1k_input = models.PositiveIntegerField(
        default=0,
        help_text="Credits per 1,000 input (prompt) tokens of a /v1/chat/completions call, "
        "on top of the fixed price; 0: not metered",
    )
    price_per_1k_output = models.PositiveIntegerField(
        default=0,
        help_text="Credits per 1,000 output (completion) tokens; intake holds max_tokens' worth "
        "and the end captures what was used",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["service", "action"]
        verbose_name = "service offer"
        constraints = [
            models.UniqueConstraint(
                fields=["service", "action"], name="offer_service_action_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.service}/{self.action}"

    @property
    def metered(self) -> bool:
        return bool(self.price_per_1k_input or self.price_per_1k_output)

    def clean(self) -> None:
        self.model_name = self.model_name or None  # a blank admin field: not a model (unique)
        if self.metered and not self.model_name:
            raise ValidationError(
                {
                    "model_name": "an offer with per-token prices is called on the gateway "
                    "(/v1/chat/completions): give it a model_name"
                }
            )
        # Field validators skip "empty" values such as [] or None; params must be an object.
        if not isinstance(self.params, dict):
            raise ValidationError({"params": "params must be a JSON object"})
        if not isinstance(self.fallbacks, list):
            raise ValidationError(
                {"fallbacks": 'fallbacks must be a JSON list, e.g. ["http.post"]'}
            )
        self.fallbacks = normalized_fallbacks(self.fallbacks)
        primary = {"handler": self.handler_id}
        if any(entry == primary for entry in self.fallbacks):
            raise ValidationError(
                {
                    "fallbacks": "a fallback that is the offer's own handler with the same params "
                    "and credentials would only repeat it; give it other credentials or params"
                }
            )

    def fallback_routes(self) -> list[dict]:
        """The fallbacks as the executor needs them (snapshotted on each request): handler,
        params (the offer's unless the entry has its own), credentials, credits, resource."""
        entries = normalized_fallbacks(self.fallbacks or [])
        if not entries:
            return []
        ids = [entry["handler"] for entry in entries]
        credits = dict(ServiceHandler.objects.filter(id__in=ids).values_list("id", "credits"))
        return [
            {
                "handler": entry["handler"],
                "params": entry.get("params", self.params or {}),
                "credentials": entry.get("credentials") or None,
                "credits": credits.get(entry["handler"], 0),
                # Its own resource (a second provider's limits and circuit breaker), else
                # its handler's.
                "resource": entry.get("resource") or route_for_handler(entry["handler"])[0],
            }
            for entry in entries
        ]

    @property
    def inputs(self) -> list[str]:
        return template_fields(self.prompt_template)

    @property
    def endpoint(self) -> str:
        return f"/svc/{self.service}/{self.action}/"


class Account(models.Model):
    """A client's credits: `balance` is spendable, `held` is reserved by requests in flight.

    Only api/services/accounts.py changes these, always together with a LedgerEntry, so that
    granted == balance + held + captured holds at every commit.
    """

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="account"
    )
    balance = models.PositiveBigIntegerField(default=0)
    held = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=models.Q(balance__gte=0), name="account_balance_gte_0"
            ),
            models.CheckConstraint(condition=models.Q(held__gte=0), name="account_held_gte_0"),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.balance} credits, {self.held} held)"


class LedgerEntry(models.Model):
    """One immutable credit movement. A request has at most one hold and one settlement."""

    GRANT, HOLD, CAPTURE, RELEASE = "grant", "hold", "capture", "release"
    KINDS = [
        (GRANT, "grant (credits added)"),
        (HOLD, "hold (reserved at intake)"),
        (CAPTURE, "capture (charged on success)"),
        (RELEASE, "release (returned: failed, canceled or expired)"),
    ]

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="ledger_entries"
    )
    kind = models.CharField(max_length=10, choices=KINDS)
    amount = models.PositiveBigIntegerField()
    # The request the movement belongs to; for grants a unique grant key ("grant:<uuid>").
    request_id = models.CharField(max_length=80, db_index=True)
    # Set on captures and releases only: unique, so a request is settled exactly once.
    settles = models.CharField(max_length=80, null=True, blank=True, unique=True, editable=False)
    note = models.CharField(max_length=200, blank=True)
    # On holds: the API key the request came with (its budget and in-flight count move with
    # the hold and its settlement).
    api_key = models.ForeignKey(
        "api.ApiKey", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "ledger entry"
        verbose_name_plural = "ledger"
        constraints = [
            models.UniqueConstraint(
                fields=["request_id", "kind"], name="ledger_request_kind_unique"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} ({self.request_id[:12]})"


class UsageRecord(models.Model):
    """What one executed request cost: the client's price and the integration credits used."""

    request_id = models.CharField(max_length=80, unique=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="usage_records"
    )
    service = models.CharField(max_length=50)
    action = models.CharField(max_length=50)
    handler = models.CharField(max_length=100)
    resource = models.CharField(max_length=100, db_index=True)
    status = models.CharField(max_length=20)
    calls = models.PositiveIntegerField(help_text="handler calls made")
    credits = models.PositiveBigIntegerField(help_text="integration credits consumed")
    price = models.PositiveBigIntegerField(help_text="client credits captured (0 unless succeeded)")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.service}/{self.action} {self.request_id[:12]}"


def validate_percent(value: int) -> None:
    if not 0 <= value <= 100:
        raise ValidationError("a percentage from 0 to 100")


class ServiceDeal(models.Model):
    """Several offers sold as one request at one price, with optional add-ons (API.md)."""

    name = models.SlugField(
        max_length=50, unique=True, help_text="Bought at POST /svc/deal/<name>/"
    )
    offers = models.ManyToManyField(
        ServiceOffer, through="ServiceDealItem", related_name="deals", blank=True
    )
    price = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Fixed price (credits) of the deal's offers; empty: their prices less "
        "price_modifier %",
    )
    price_modifier = models.PositiveSmallIntegerField(
        default=0,
        validators=[validate_percent],
        help_text="% off the sum of the offers' prices (used when no fixed price is set)",
    )
    addons = models.ManyToManyField(
        ServiceOffer, through="ServiceDealAddon", related_name="addon_of_deals", blank=True
    )
    addons_modifier = models.PositiveSmallIntegerField(
        default=0,
        validators=[validate_percent],
        help_text="% off the sum of the add-ons a client selects",
    )
    description = models.CharField(max_length=200, blank=True)
    is_active = models.BooleanField(default=True, help_text="Inactive deals answer 404")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        verbose_name = "service deal"

    def __str__(self) -> str:
        return self.name

    @property
    def endpoint(self) -> str:
        return f"/svc/deal/{self.name}/"

    def ordered_items(self) -> list["ServiceDealItem"]:
        return list(self.items.select_related("offer").order_by("position", "id"))

    def ordered_addons(self) -> list["ServiceDealAddon"]:
        return list(self.addon_items.select_related("offer").order_by("position", "id"))

    def price_for(self, items: list[ServiceOffer], addons: list[ServiceOffer]) -> int:
        """The price of these items with these selected add-ons (deal_rules.deal_price)."""
        return deal_rules.deal_price(
            fixed=self.price,
            price_modifier=self.price_modifier,
            item_prices=[offer.price for offer in items],
            addon_prices=[offer.price for offer in addons],
            addons_modifier=self.addons_modifier,
        )


class ServiceDealItem(models.Model):
    """One offer of a deal, in order; a pipeline step follows the item before it."""

    PIPELINE_CHOICES = [
        (deal_rules.OVERWRITE, "overwrite: its own results"),
        (deal_rules.EXTEND, "extend: the previous results, then its own"),
        (deal_rules.PASS_THROUGH, "pass through: the previous results unchanged"),
    ]

    deal = models.ForeignKey(ServiceDeal, on_delete=models.CASCADE, related_name="items")
    offer = models.ForeignKey(ServiceOffer, on_delete=models.PROTECT, related_name="deal_items")
    position = models.PositiveIntegerField(default=0)
    pipeline = models.CharField(
        max_length=20,
        choices=PIPELINE_CHOICES,
        blank=True,
        default="",
        help_text="Empty: runs in parallel with the others. Otherwise starts when the item "
        "before it succeeds and gets its output as {previous}",
    )

    class Meta:
        ordering = ["position", "id"]
        verbose_name = "deal offer"

    def __str__(self) -> str:
        mode = f" ({self.pipeline})" if self.pipeline else ""
        return f"{self.offer}{mode}"

    def step(self) -> deal_rules.Step:
        return deal_rules.Step(str(self.offer), self.offer.prompt_template, self.pipeline or None)


class ServiceDealAddon(models.Model):
    """An optional offer of a deal, run (in parallel) after the items when a client selects it."""

    deal = models.ForeignKey(ServiceDeal, on_delete=models.CASCADE, related_name="addon_items")
    offer = models.ForeignKey(ServiceOffer, on_delete=models.PROTECT, related_name="deal_addons")
    position = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["position", "id"]
        verbose_name = "deal add-on"
        constraints = [
            models.UniqueConstraint(fields=["deal", "offer"], name="deal_addon_unique"),
        ]

    def __str__(self) -> str:
        return str(self.offer)

    def step(self) -> deal_rules.Step:
        return deal_rules.Step(str(self.offer), self.offer.prompt_template)


class CircuitBreaker(models.Model):
    """No table: gives the admin index a "Circuit breakers" page (api/admin_breakers.py)
    showing each resource's breaker, whose state lives in Redis (executor/breaker.py)."""

    class Meta:
        managed = False  # no table: migrations record the model's state only
        default_permissions = ("view",)  # read-only: breakers move by themselves
        verbose_name = "circuit breaker"
        verbose_name_plural = "circuit breakers"

    def __str__(self) -> str:
        return f"circuit breaker {self.pk}"

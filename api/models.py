"""Catalog (handlers, offers, deals) and client accounts. Requests live in MongoDB
(api/documents.py)."""

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from api import deal_rules
from api.prompt_templates import TemplateError, template_fields

# Service slugs that would shadow the API's own routes under /svc/.
RESERVED_SERVICES = frozenset({"request", "deal", "account"})
# Most results one request may ask a handler for.
MAX_CREATE_QTY = 100


def validate_handler_id(value: str) -> None:
    from executor.handlers import all_handlers

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
        validators=[MinValueValidator(1), MaxValueValidator(MAX_CREATE_QTY)],
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

    def clean(self) -> None:
        # Field validators skip "empty" values such as [] or None; params must be an object.
        if not isinstance(self.params, dict):
            raise ValidationError({"params": "params must be a JSON object"})

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

"""The audit trail of operators' changes (django-auditlog): who, what, when, before and after.

auditlog records each save and delete of the models registered here as a LogEntry, with the
operator and client address of the admin request that made it (`AuditMiddleware`); the admin
lists them under "Log entries" (superusers and support may read them, nobody may change one).
Registered:

- the catalog: handlers, offers, deals and their items and add-ons;
- accounts and API keys (services move balances, holds and key counters with queryset
  updates, which send no signals, so requests leave no entries; only admin and service
  writes of the rows do);
- auth users (groups and permissions too) and groups (their permissions): who was made
  an operator, and of which role.

Not registered: the ledger and usage records (append-only, themselves the record of every
credit movement; an entry per request would double the writes of every request), and the
models without a table (circuit breakers move in Redis by themselves; configs change through
`manage.py config`, which keeps its own events in MongoDB).

No secret reaches an entry: a key's hash and a user's password hash are never compared into
changes in clear (`hashed` is left out, `password` is masked whole: an entry says it changed),
and the key counters that move on every request are left out as noise.

Admin actions that change data through services with queryset updates (granting credits,
revoking keys) send no signal: they write their entry with `action_logged`, in the same
transaction as the change. Into auditlog's LogEntry rather than Django's admin LogEntry: one
trail, with before and after, the address and a page support can read; Django's keeps a
message per change and has no page.
"""

from functools import cache

from auditlog.middleware import AuditlogMiddleware
from auditlog.models import LogEntry
from auditlog.registry import auditlog
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.urls import reverse

from api.keys import ApiKey
from api.models import (
    Account,
    ServiceDeal,
    ServiceDealAddon,
    ServiceDealItem,
    ServiceHandler,
    ServiceOffer,
)
from infra.client_ip import client_ip

MASK = "********"
MASK_CALLABLE = "api.admin.audit.mask_whole"
# ApiKey fields no entry shows: the hash (all we keep of the secret) and the counters the
# ledger moves on every request.
API_KEY_UNAUDITED = ["hashed", "period_start", "period_spent", "in_flight", "last_used_at"]


def mask_whole(value: str) -> str:
    """auditlog's own mask keeps the second half of a value; a secret's hash keeps none."""
    return MASK


def register() -> None:
    for model in (ServiceHandler, ServiceOffer, ServiceDeal, ServiceDealItem, ServiceDealAddon):
        auditlog.register(model)
    auditlog.register(Account)
    auditlog.register(ApiKey, exclude_fields=API_KEY_UNAUDITED)
    auditlog.register(
        get_user_model(),
        exclude_fields=["last_login"],  # moves on every login; axes logs logins
        mask_fields=["password"],
        mask_callable=MASK_CALLABLE,
        m2m_fields=["groups", "user_permissions"],
    )
    auditlog.register(Group, m2m_fields=["permissions"])


def action_logged(request, obj, *, changes: dict[str, list], action: str, **details) -> LogEntry:
    """An "update" entry for an admin action on `obj`: `changes` is {field: [before, after]},
    `details` what the action was given (stored as the entry's additional data)."""
    return LogEntry.objects.log_create(
        obj,
        action=LogEntry.Action.UPDATE,
        changes={field: [str(before), str(after)] for field, (before, after) in changes.items()},
        actor=request.user,
        remote_addr=client_ip(request) or None,
        additional_data={"admin_action": action, **details},
    )


class AuditMiddleware(AuditlogMiddleware):
    """auditlog's middleware, for the admin's requests only, with the client address taken as
    the rest of the project takes it (auditlog's own trusts the leftmost X-Forwarded-For,
    which the client writes).

    Only the admin's: the API authenticates with keys inside its views, after middleware, so
    auditlog could not name an API caller anyway, and its context (a signal connected and
    disconnected per request) would cost every intake request. An entry written outside the
    admin (a service, a command) has no actor; the rows it concerns say who asked
    (e.g. ApiKey.created_by)."""

    def __call__(self, request):
        if not request.path.startswith(admin_prefix()):
            return self.get_response(request)
        return super().__call__(request)

    @staticmethod
    def _get_remote_addr(request):
        return client_ip(request) or None


@cache
def admin_prefix() -> str:
    return reverse("admin:index")


register()

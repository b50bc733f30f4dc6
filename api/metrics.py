"""Metrics of the domain this app owns: requests that ended and credits through the ledger.

Labels stay bounded: `service`/`action` are catalog slugs, `status` a terminal status, `kind`
a ledger kind; never a request id or a client. In multiprocess mode (infra/metrics.py) the
API's /metrics sums the counters over every process of the host, whichever process moved
the request or the credits (executor, API, recon, admin).
"""

from django.db import transaction
from django.db.models import Sum
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily

from api.models import Account

REQUESTS = Counter(
    "svc_requests_total",
    "Requests that ended, by offer (service, action; a deal: `deal`, its name) and terminal status",
    ["service", "action", "status"],
)
CREDITS = Counter(
    "svc_credits_total",
    "Client credits moved through the ledger, by kind (grant, hold, capture, release)",
    ["kind"],
)


def request_ended(request) -> None:
    """Count a request that reached a terminal status, in whichever process ended it (the
    executor, the API for a cancel, recon for an expiry or an abandon): called by
    api/services/requests.py transition(). A deal's own document has service `deal`."""
    REQUESTS.labels(service=request.service, action=request.action, status=request.status).inc()


def ledger_entry_saved(sender, instance, created: bool, **kwargs) -> None:
    """post_save of api.LedgerEntry (connected in api/apps.py): every credit movement in any
    process, counted once its transaction commits (a rolled-back hold moved nothing)."""
    if not created:
        return
    kind, amount = instance.kind, instance.amount
    transaction.on_commit(lambda: CREDITS.labels(kind=kind).inc(amount), using=kwargs.get("using"))


def credit_families():
    """Client credits now, all clients together (SQL, at scrape time: exact across hosts)."""
    totals = Account.objects.aggregate(balance=Sum("balance"), held=Sum("held"))
    balance = GaugeMetricFamily(
        "svc_credits_balance", "Spendable client credits, all clients together"
    )
    balance.add_metric([], totals["balance"] or 0)
    held = GaugeMetricFamily(
        "svc_credits_held", "Client credits held by requests in flight, all clients together"
    )
    held.add_metric([], totals["held"] or 0)
    return [balance, held]

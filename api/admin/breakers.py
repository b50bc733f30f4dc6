"""A read-only admin page of circuit breakers, one per resource, read from Redis.

Breakers have no SQL table: CircuitBreaker (api/models.py) only gives the admin index an entry
and a view permission. Its ModelAdmin replaces every URL with one page listing each resource
(of the resource map or of a registered handler) with its breaker's state, consecutive
failures, settings and cool-down left (executor/breaker.py). Breakers move by themselves, so
there are no add, change or delete views.
"""

from datetime import UTC, datetime

import redis
from django.contrib import admin
from django.template.response import TemplateResponse

from api.models import CircuitBreaker
from executor import breaker, resources
from executor.handlers import all_handlers
from infra.admin_pages import ReadOnlyPageAdmin

TEMPLATE = "admin/api/circuitbreaker/breakers.html"


@admin.register(CircuitBreaker)
class CircuitBreakerAdmin(ReadOnlyPageAdmin):
    def pages(self):
        return [("", self.breakers_view, "changelist")]

    def breakers_view(self, request):
        try:
            rows, problem = breaker_rows(), ""
        except (redis.RedisError, resources.ResourceMapError) as exc:
            rows, problem = [], f"cannot read the breakers: {type(exc).__name__}"
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Circuit breakers",
            "rows": rows,
            "problem": problem,
        }
        return TemplateResponse(request, TEMPLATE, context)


def breaker_rows() -> list[dict]:
    """Each resource's breaker, by resource name, with its policy and opened-at time."""
    known = resources.load_resource_map()
    names = sorted(set(known) | {h.resource for h in all_handlers().values()})
    rows = []
    for name in names:
        resource = known.get(name) or resources.Resource(name)
        row = breaker.snapshot(resource)
        opened = row["opened_at"]
        row["opened_at"] = datetime.fromtimestamp(opened, UTC) if opened else None
        row["policy"] = resource.breaker_policy
        rows.append(row)
    return rows

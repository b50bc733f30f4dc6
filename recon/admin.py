"""A read-only admin page of hourly usage, read from MongoDB through recon/usage.py.

Hourly usage has no SQL table: UsageHour (recon/models.py) only gives the admin index a
"Recon" entry and a view permission. Its ModelAdmin replaces every URL with one page: per
hour, handler, resource and client, what was executed and charged, with each hour's totals
and the totals of the window shown. Recon computes the figures, so there are no add, change
or delete views.
"""

from datetime import UTC, datetime
from itertools import groupby

from django.contrib import admin
from django.template.response import TemplateResponse

from infra.admin_pages import ReadOnlyPageAdmin
from recon import defaults, usage
from recon.models import UsageHour

TEMPLATE = "admin/recon/usagehour/hourly.html"
FIGURES = ("requests", "succeeded", "failed", "calls", "credits", "price")


@admin.register(UsageHour)
class UsageHourAdmin(ReadOnlyPageAdmin):
    def pages(self):
        return [("", self.hourly_view, "changelist")]

    def hourly_view(self, request):
        hours = hours_shown(request.GET.get("hours"))
        rows = usage.hourly(since=usage.window_start(datetime.now(UTC), hours))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Hourly usage",
            "hours": hours,
            "figures": FIGURES,
            "by_hour": hour_groups(rows),
            "total": totals(rows),
        }
        return TemplateResponse(request, TEMPLATE, context)


def hours_shown(value: str | None) -> int:
    try:
        hours = int(value) if value else defaults.USAGE_HOURS_SHOWN
    except ValueError:
        hours = defaults.USAGE_HOURS_SHOWN
    return min(max(hours, 1), defaults.USAGE_MAX_HOURS_SHOWN)


def totals(rows: list[dict]) -> dict:
    return {figure: sum(row[figure] for row in rows) for figure in FIGURES}


def hour_groups(rows: list[dict]) -> list[dict]:
    """Rows (newest hour first) grouped by hour, each group with its totals."""
    groups = []
    for hour, in_hour in groupby(rows, key=lambda row: row["hour"]):
        in_hour = list(in_hour)
        groups.append({"hour": hour, "rows": in_hour, "total": totals(in_hour)})
    return groups

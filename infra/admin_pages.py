"""Admin pages over data that lives outside the SQL database (MongoDB, Redis).

Such a "model" (an unmanaged one, see configs/models.py) only gives the admin index an entry
and a view permission. Its ModelAdmin has no add, change or delete views: a subclass lists
its pages in `pages()`, each served to staff with the view permission only.

    @admin.register(UsageHour)
    class UsageHourAdmin(ReadOnlyPageAdmin):
        def pages(self):
            return [("", self.hourly_view, "changelist")]
"""

from functools import update_wrapper

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.urls import path


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records that change only through services (or outside SQL), never by hand."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyPageAdmin(ReadOnlyAdmin):
    def pages(self) -> list[tuple]:
        """(route, view, name) of each page; name "changelist" is the index entry's page."""
        raise NotImplementedError

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        return [
            path(route, self._guard(view), name=f"{prefix}_{name}")
            for route, view, name in self.pages()
        ]

    def _guard(self, view):
        """Staff only (admin_view sends others to the login page), with the view permission."""

        def guarded(request, **kwargs):
            if not self.has_view_permission(request):
                raise PermissionDenied
            return view(request, **kwargs)

        return self.admin_site.admin_view(update_wrapper(guarded, view))

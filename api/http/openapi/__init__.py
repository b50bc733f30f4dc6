"""The OpenAPI 3.1 document (`/api/schema/`, Swagger UI at `/api/docs/`): the fixed endpoints,
and one operation per active offer and deal with its exact inputs and its price.

drf-spectacular serves and renders it, but cannot read our views (they answer the dicts of
representations.py, not serializers), so the operations are written here, by two hooks of
SPECTACULAR_SETTINGS: `leave_described_endpoints` keeps AutoSchema off the routes described
here, and `describe_api` writes them, the catalog's included. A route of api/http/urls.py that
is not described here still shows, as AutoSchema guesses it (tests/api/test_openapi.py fails).

The document follows the catalog without a restart: each process keeps it rendered for one
`catalog_version`, a fingerprint of the catalog's rows read in four small queries per GET, so
a save or delete in any process (the admin, `catalog import`, a shell) shows in the next GET.

schemas.py holds the shapes, operations.py the operations; here are the hooks and the serving.
"""

import base64
import hashlib
import re
import threading
from collections.abc import Callable
from importlib import metadata

from csp.decorators import csp_update
from django.db.models import Count, Max
from django.http import HttpResponse
from django.template.loader import get_template
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.permissions import AllowAny

from api.http.openapi.operations import catalog_paths, components, fixed_paths
from api.http.openapi.schemas import KEY_REQUIRED as KEY_REQUIRED  # tests read it here
from api.http.throttling import AnonymousThrottle
from api.models import ServiceDeal, ServiceDealAddon, ServiceDealItem, ServiceOffer

# --- the hooks (SPECTACULAR_SETTINGS) -------------------------------------------------------

# The routes whose operations come from the catalog, in drf-spectacular's path syntax.
CATALOG_ROUTES = {("/svc/{}/{}/", "post"), ("/svc/deal/{}/", "post")}


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]*\}", "{}", path)


def leave_described_endpoints(endpoints, **kwargs):
    """PREPROCESSING_HOOKS: AutoSchema only for the routes this module does not describe."""
    described = CATALOG_ROUTES | {
        (_shape(path), method) for path, item in fixed_paths().items() for method in item
    }
    return [e for e in endpoints if (_shape(e[0]), e[2].lower()) not in described]


def describe_api(result, generator, request, public):
    """POSTPROCESSING_HOOKS: the fixed operations, then the catalog's, then what AutoSchema
    found (routes not described here); the components they refer to."""
    fixed = fixed_paths()
    catalog = catalog_paths()
    result["paths"] = {
        "/svc/": fixed.pop("/svc/"),
        **catalog,
        **fixed,
        **{path: item for path, item in result["paths"].items() if path not in catalog},
    }
    found = result.get("components", {})
    result["components"] = {**found, **components()}
    result["info"]["version"] = _package_version()
    result["info"]["x-catalog-version"] = catalog_version()
    result["tags"] = _tags(result["paths"])
    return result


def _package_version() -> str:
    try:
        return metadata.version("svc-marketplace")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "0.0.0"


def _tags(paths: dict) -> list[dict]:
    described = {
        "catalog": "What is on sale (public)",
        "deals": "Several offers sold as one request",
        "requests": "Your requests: read, cancel, follow",
        "account": "Credits and transactions",
        "keys": "API keys (a key with `can_manage_keys`)",
        "webhooks": "Where requests' events are POSTed, signed",
    }
    names = []
    for item in paths.values():
        for operation in item.values():
            names += [tag for tag in operation.get("tags", ()) if tag not in names]
    return [
        {"name": name, "description": described.get(name, f"The offers of service `{name}`")}
        for name in names
    ]


# --- serving, cached per catalog version ----------------------------------------------------


def catalog_version() -> str:
    """A fingerprint of what the document shows of the catalog. Offers and deals: their count
    and latest `updated_at` (auto_now: every save; a delete lowers the count). A deal's offers
    and add-ons have no timestamp: their rows as they are (a deal has a few)."""
    parts = [
        model.objects.aggregate(n=Count("pk"), at=Max("updated_at"))
        for model in (ServiceOffer, ServiceDeal)
    ]
    parts += [
        list(
            ServiceDealItem.objects.order_by("pk").values_list(
                "pk", "deal", "offer", "position", "pipeline"
            )
        ),
        list(
            ServiceDealAddon.objects.order_by("pk").values_list("pk", "deal", "offer", "position")
        ),
    ]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


class DocumentCache:
    """The document of one catalog version (the latest asked for), rendered per media type."""

    def __init__(self):
        self._lock = threading.Lock()
        self._version: str | None = None
        self._schema: dict | None = None
        self._bodies: dict[str, bytes] = {}

    def body(
        self,
        *,
        version: str,
        media_type: str,
        generate: Callable[[], dict],
        render: Callable[[dict], bytes],
    ) -> bytes:
        with self._lock:  # one generation at a time; a cached answer waits microseconds
            if self._version != version:
                self._schema, self._bodies = generate(), {}
                self._version = version
            if media_type not in self._bodies:
                self._bodies[media_type] = render(self._schema)
            return self._bodies[media_type]

    def forget(self) -> None:
        with self._lock:
            self._version, self._schema, self._bodies = None, None, {}


documents = DocumentCache()


class SchemaView(SpectacularAPIView):
    """`GET /api/schema/`: YAML (`application/vnd.oai.openapi`, the default) or JSON
    (`?format=json`, `Accept: application/json`); public, limited per IP like the catalog."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [AnonymousThrottle]

    def _get_schema_response(self, request):
        renderer = request.accepted_renderer
        body = documents.body(
            version=catalog_version(),
            media_type=renderer.media_type,
            generate=lambda: super(SchemaView, self)._get_schema_response(request).data,
            render=lambda schema: renderer.render(schema, renderer.media_type, {}),
        )
        charset = f"; charset={renderer.charset}" if renderer.charset else ""
        response = HttpResponse(body, content_type=renderer.media_type + charset)
        response["Content-Disposition"] = f'inline; filename="schema.{renderer.format}"'
        return response


class DocsView(SpectacularSwaggerSplitView):
    """`GET /api/docs/`: Swagger UI, its assets from this origin (drf-spectacular-sidecar)
    and its script a file of its own (`?script`), as the CSP requires."""

    url_name = "api-schema"
    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [AnonymousThrottle]

    @classmethod
    def as_view(cls, **initkwargs):
        view = super().as_view(**initkwargs)
        style = inline_style_source(cls.template_name)
        return csp_update({"style-src": [style]})(view) if style else view


def inline_style_source(template_name: str) -> str | None:
    """The CSP source allowing the page's one inline `<style>` (drf-spectacular's template):
    its hash, so no other inline style runs."""
    found = re.search(r"<style>(.*?)</style>", get_template(template_name).template.source, re.S)
    if found is None:
        return None
    digest = base64.b64encode(hashlib.sha256(found.group(1).encode()).digest()).decode()
    return f"'sha256-{digest}'"

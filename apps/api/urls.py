"""/api/: the vmpooler v3 routes (also under /api/v2), the native API, docs, tokens, metrics."""

from django.contrib.auth.decorators import login_not_required
from django.http import Http404
from django.urls import URLPattern, URLResolver, include, path
from django.views.decorators.csrf import csrf_exempt

from apps.api import metrics, views, vmpooler
from apps.api.decorators import api_view
from apps.api.http import ApiError, is_api_path
from apps.api.native import api


def _not_found(request, rest=""):
    raise ApiError("No such API endpoint.", 404)


_api_not_found = api_view(auth_by="handler")({m: _not_found for m in ("GET", "POST", "PUT", "PATCH", "DELETE")})


@login_not_required  # the API answers 401 in JSON itself; a page path gets the plain 404 page
@csrf_exempt  # as every API view: token-authenticated, no session
def not_found(request, rest=""):
    """Unknown URLs under /api/: JSON for the API, the site's own 404 page under its pages."""
    if not is_api_path(request.path):
        raise Http404(request.path)
    return _api_not_found(request, rest)


def _public_of_login_middleware(patterns):
    # Ninja's views answer 401 in JSON themselves; the login middleware must not redirect them.
    for p in patterns:
        if isinstance(p, URLResolver):
            _public_of_login_middleware(p.url_patterns)
        elif isinstance(p, URLPattern):
            login_not_required(p.callback)
    return patterns


vmpooler_patterns = [
    path("vm", vmpooler.vm_collection),
    path("vm/<str:name>", vmpooler.vm_dispatch),
    path("token", vmpooler.token_collection),
    path("token/<str:raw>", vmpooler.token_item),
    path("status", vmpooler.status),
    path("summary", vmpooler.summary),
    path("summary/<str:route>", vmpooler.summary_part),
    path("summary/<str:route>/<str:key>", vmpooler.summary_part),
    path("poolstat", vmpooler.poolstat),
    path("totalrunning", vmpooler.totalrunning),
    path("config", vmpooler.config),
    path("config/poolsize", vmpooler.config_poolsize),
    path("config/pooltemplate", vmpooler.config_pooltemplate),
    path("config/clonetarget", vmpooler.config_clonetarget),
    path("vm/<str:name>/disk/<str:size>", vmpooler.vm_disk),
    path("vm/<str:name>/snapshot", vmpooler.vm_snapshot),
    path("vm/<str:name>/snapshot/<str:snapshot>", vmpooler.vm_revert),
    path("ondemandvm", vmpooler.ondemand_collection),
    path("ondemandvm/<str:name>", vmpooler.ondemand_item),
    path("config/poolsize/<str:pool>", vmpooler.config_poolsize_undo),
    path("config/pooltemplate/<str:pool>", vmpooler.config_pooltemplate_undo),
    path("poolreset", vmpooler.poolreset),
]

native_urls, native_app, native_namespace = api.urls
_public_of_login_middleware(native_urls)

urlpatterns = [
    path("api/v3/", include(vmpooler_patterns)),
    path("api/v2/", include((vmpooler_patterns, "api-v2"), namespace="api-v2")),
    path("api/v1/", include((native_urls, native_app), namespace=native_namespace)),
    path("api/docs/", views.docs, name="api-docs"),
    path("api/tokens/", views.token_list, name="api-tokens"),
    path("api/tokens/new", views.token_create, name="api-token-create"),
    path("api/tokens/<int:token_id>/revoke", views.token_revoke, name="api-token-revoke"),
    path("metrics", metrics.metrics, name="metrics"),
    # vmpooler's own dashboard reads these two.
    path("dashboard/stats/vmpooler/pool", vmpooler.dashboard_pool),
    path("dashboard/stats/vmpooler/running", vmpooler.dashboard_running),
    path("api/<path:rest>", not_found),
]

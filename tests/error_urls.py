"""The site's URLs plus views that fail on purpose, for tests/test_error_pages.py."""

from django.core.exceptions import PermissionDenied, SuspiciousOperation
from django.urls import path

from vmportal import urls as site_urls


def boom(request, rest=""):
    raise RuntimeError("a bug, on purpose")


def forbidden(request):
    raise PermissionDenied("Only the pool's owner may do that.")


def suspicious(request):
    raise SuspiciousOperation("a malformed request, on purpose")


urlpatterns = [
    path("boom/", boom),
    path("forbidden/", forbidden),
    path("suspicious/", suspicious),
    path("api/v3/boom", boom),
    *site_urls.urlpatterns,
]
handler400 = site_urls.handler400
handler403 = site_urls.handler403
handler404 = site_urls.handler404
handler500 = site_urls.handler500

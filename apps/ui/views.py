from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from apps.pools.selectors import pools_with_counts


def home(request: HttpRequest) -> HttpResponse:
    pools = pools_with_counts().filter(enabled=True)
    template = "leases/partials/_pool_rows.html" if request.htmx and not request.htmx.boosted else "leases/home.html"
    return render(request, template, {"pools": pools, "max_per_checkout": settings.VMPORTAL_MAX_VMS_PER_CHECKOUT})


@login_not_required
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness for load balancers: the process answers and the database does too."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:  # any database failure means "not ready"
        # No details: this answers without a login, and a driver's error names hosts and users.
        logging.getLogger(__name__).exception("healthz: the database does not answer")
        return JsonResponse({"status": "error", "database": "unavailable"}, status=503)
    return JsonResponse({"status": "ok"})

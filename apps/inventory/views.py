"""The host load page for admins: every host by cluster, its state and the last hour of load."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from apps.core.htmx import htmx_partial
from apps.core.permissions import admin_required
from apps.inventory import selectors
from apps.vsphere.placement import thresholds as placement_thresholds


@admin_required
@require_GET
def host_load(request: HttpRequest) -> HttpResponse:
    range_name = request.GET.get("range", "1h")
    range_name = range_name if range_name in selectors.RANGES else "1h"
    ctx = {"clusters": selectors.host_load(window=selectors.RANGES[range_name]), "range": range_name,
           "ranges": list(selectors.RANGES), "datastores": selectors.datastores(),
           "spark_w": selectors.SPARK_W, "spark_h": selectors.SPARK_H, "host_limits": placement_thresholds()}
    template = "inventory/partials/_hosts.html" if htmx_partial(request) else "inventory/host_load.html"
    return render(request, template, ctx)

"""The audit log pages for admins: search, keyset pages, CSV export, one event's diff."""

from __future__ import annotations

import csv
import json

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from apps.audit import selectors
from apps.audit.export import csv_row
from apps.audit.forms import AuditFilterForm
from apps.audit.models import AuditEvent
from apps.core.htmx import htmx_partial
from apps.core.permissions import admin_required


def _audit_events(request: HttpRequest):
    form = AuditFilterForm(request.GET or None)
    if form.is_bound and form.is_valid():
        return form, selectors.filter_audit(**form.filters())
    if form.is_bound:
        return form, AuditEvent.objects.none()
    return form, selectors.filter_audit()


@admin_required
@require_GET
def audit_list(request: HttpRequest) -> HttpResponse:
    form, events = _audit_events(request)
    page = selectors.audit_page(events, after=request.GET.get("after", ""))
    params = request.GET.copy()
    params.pop("after", None)
    query = params.urlencode()
    ctx = {"form": form, "page": page, "query": query,
           "first_page": not request.GET.get("after")}
    template = "audit/partials/_audit_rows.html" if htmx_partial(request) else "audit/audit_list.html"
    return render(request, template, ctx, status=400 if form.errors else 200)


class _Echo:
    def write(self, value: str) -> str:
        return value


@admin_required
@require_GET
def audit_export(request: HttpRequest) -> HttpResponse:
    form, events = _audit_events(request)
    if form.errors:
        return render(request, "audit/audit_list.html",
                      {"form": form, "page": selectors.Page([], None), "query": "", "first_page": True}, status=400)
    writer = csv.writer(_Echo())

    def rows():
        yield writer.writerow(["at", "actor", "action", "target_type", "target_id", "target", "pool_id",
                               "request_id", "message", "before", "after"])
        for e in selectors.iter_events(events):
            yield writer.writerow(csv_row([
                e.at.isoformat(), e.actor_name, e.action, e.target_type, e.target_id, e.target_repr,
                e.pool_id or "", e.request_id, e.message,
                json.dumps(e.before, sort_keys=True) if e.before is not None else "",
                json.dumps(e.after, sort_keys=True) if e.after is not None else "",
            ]))

    response = StreamingHttpResponse(rows(), content_type="text/csv; charset=utf-8")
    response["Content-Disposition"] = 'attachment; filename="vmportal-audit.csv"'
    return response


@admin_required
@require_GET
def audit_detail(request: HttpRequest, event_id: int) -> HttpResponse:
    event = get_object_or_404(AuditEvent, pk=event_id)
    return render(request, "audit/audit_detail.html", {"event": event, "diff": selectors.audit_diff(event)})

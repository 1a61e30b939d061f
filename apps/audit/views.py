"""The audit log pages for admins: search, keyset pages, CSV export, one event's diff."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import NoReverseMatch, reverse
from django.views.decorators.http import require_GET

from apps.audit import selectors
from apps.audit.export import csv_row
from apps.audit.forms import AuditFilterForm
from apps.audit.models import AuditEvent
from apps.core.htmx import htmx_partial
from apps.core.listing import Column
from apps.core.permissions import admin_required
from apps.pools.models import Pool


def _audit_events(request: HttpRequest):
    form = AuditFilterForm(request.GET or None)
    if form.is_bound and form.is_valid():
        return form, selectors.filter_audit(**form.filters())
    if form.is_bound:
        return form, AuditEvent.objects.none()
    return form, selectors.filter_audit()


def _sort_links(params: QueryDict, sort: str) -> dict[str, Column]:
    """Header links that sort by each column, keeping the filters (and starting at page one).
    The time column starts newest first, the others A to Z; the current one turns around."""
    links = {}
    for name in selectors.SORT_FIELDS:
        current = sort.removeprefix("-") == name
        desc = sort.startswith("-")
        turned = name if desc else f"-{name}"
        first = "-at" if name == "at" else name
        wanted = turned if current else first
        query = params.copy()
        query["sort"] = wanted
        links[name] = Column(href=f"?{query.urlencode()}",
                             aria_sort=("descending" if desc else "ascending") if current else "none",
                             arrow=("▼" if desc else "▲") if current else "")
    return links


# Where a target's own page is, by the target_type audit.record writes (the model's label).
TARGET_PAGES = {
    "pools.pool": "adminui:pool-detail",
    "pools.template": "adminui:template-detail",
    "leases.lease": "lease-detail",
    "firstboot.addressrange": "firstboot:range",
}


def target_url(target_type: str, target_id: str, *, staff: bool) -> str:
    """The page of an event's target: its vmportal page, else (for staff) its Django admin
    page; "" when it has neither or the id is not one (deleted targets give the 404 page)."""
    if not target_type or not target_id.isdigit():
        return ""
    name = TARGET_PAGES.get(target_type)
    if name is None and staff:
        name = "admin:{}_{}_change".format(*target_type.split(".", 1)) if "." in target_type else None
    if name is None:
        return ""
    try:
        return reverse(name, args=[int(target_id)])
    except NoReverseMatch:
        return ""


@admin_required
@require_GET
def audit_list(request: HttpRequest) -> HttpResponse:
    form, events = _audit_events(request)
    sort = selectors.clean_sort(request.GET.get("sort", ""))
    page = selectors.audit_page(events, after=request.GET.get("after", ""), sort=sort)
    params = request.GET.copy()
    params.pop("after", None)
    if sort == selectors.DEFAULT_SORT:
        params.pop("sort", None)
    else:
        params["sort"] = sort
    query = params.urlencode()
    params.pop("sort", None)
    staff = request.user.is_staff
    for event in page.events:
        event.target_url = target_url(event.target_type, event.target_id, staff=staff)
    ctx = {"form": form, "page": page, "query": query, "sort": sort, "columns": _sort_links(params, sort),
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


_TIMEDELTA = re.compile(r"(?:(-?\d+) days?, )?(\d+):(\d\d):(\d\d)(?:\.\d+)?")


def _duration(text: str) -> str | None:
    """str(timedelta), as the pool snapshot stores durations ("4166 days, 15:00:00"), in words."""
    match = _TIMEDELTA.fullmatch(text)
    if match is None:
        return None
    days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
    parts = [f"{days} day{'s' if abs(days) != 1 else ''}"] if days else []
    parts += [f"{n} {unit}" for n, unit in ((hours, "h"), (minutes, "min"), (seconds, "s")) if n]
    return " ".join(parts) or "0 s"


@dataclass
class Shown:
    text: str
    href: str = ""


def shown(key: str, value: Any) -> Shown | None:
    """A before/after value as a person reads it: a related row by its name (linked where it
    has a page), durations in words, yes/no, lists joined, anything else as compact JSON."""
    if value is None:
        return None
    if isinstance(value, bool):
        return Shown("yes" if value else "no")
    if isinstance(value, dict) and "name" in value:
        pk = value.get("id")
        page = TARGET_PAGES.get(f"pools.{key}")
        return Shown(str(value["name"]), reverse(page, args=[pk]) if page and isinstance(pk, int) else "")
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return Shown(", ".join(map(str, value)) or "(none)")
    if isinstance(value, dict | list):
        return Shown(json.dumps(value, sort_keys=True, separators=(", ", ": ")))
    if isinstance(value, str):
        return Shown(_duration(value) or value)
    return Shown(str(value))


@admin_required
@require_GET
def audit_detail(request: HttpRequest, event_id: int) -> HttpResponse:
    event = get_object_or_404(AuditEvent, pk=event_id)
    diff = selectors.audit_diff(event)
    shown_diff = [
        {"key": row.key, "changed": row.changed, "values": (shown(row.key, row.before), shown(row.key, row.after))}
        for row in diff
    ]
    pool_name = Pool.objects.filter(pk=event.pool_id).values_list("name", flat=True).first() if event.pool_id else None
    return render(request, "audit/audit_detail.html", {
        "event": event, "diff": diff, "shown_diff": shown_diff, "pool_name": pool_name,
        "target_url": target_url(event.target_type, event.target_id, staff=request.user.is_staff),
        "pool_url": reverse("adminui:pool-detail", args=[event.pool_id]) if pool_name else "",
        "pool_events": f"{reverse('adminui:audit')}?{urlencode({'pool': event.pool_id})}" if event.pool_id else "",
    })

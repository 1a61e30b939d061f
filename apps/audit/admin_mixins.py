"""Django-admin edits leave the same audit rows as the pages' services, and the admin's lists
of big tables answer in bounded time."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.contrib.admin import helpers
from django.core.paginator import Paginator
from django.db import connection, models
from django.utils.functional import cached_property
from django.utils.html import format_html
from django.utils.translation import gettext as _

from apps.audit import services as audit

# Up to this many rows a changelist says exactly how many match; past it, about how many.
EXACT_COUNT_UP_TO = 10_000


class CappedCountPaginator(Paginator):
    """COUNT(*) reads every matching row for one number in the footer (300 ms for a year of a
    million audit events): count exactly up to EXACT_COUNT_UP_TO, which stops there, and past
    it take the planner's estimate of the filtered query, never less than the cap. Pages past
    an estimate that ran high are simply empty."""

    @cached_property
    def count(self) -> int:
        rows = self.object_list
        if connection.vendor != "postgresql" or not isinstance(rows, models.QuerySet):
            return super().count
        rows = rows.order_by()
        counted = rows[:EXACT_COUNT_UP_TO + 1].count()
        if counted <= EXACT_COUNT_UP_TO:
            return counted
        plan = json.loads(rows.explain(format="json"))
        return max(counted, int(plan[0]["Plan"]["Plan Rows"]))


class LargeTableAdmin(admin.ModelAdmin):
    """A changelist of a table that grows with use (VMs, leases, jobs, audit events, inventory):
    a capped count, no second count of the unfiltered table, 50 rows a page, and each row's
    checkbox written directly rather than through the form template engine (a fifth of a
    page's time). Its
    list_display should name nullable foreign keys in list_select_related, since the
    changelist's own select_related() skips them (one query per row)."""

    show_full_result_count = False
    paginator = CappedCountPaginator
    # Rendering a row (its links, dates, foreign keys) costs about 0.5 ms of CPU: 100 rows
    # were most of a page's 60 ms.
    list_per_page = 50

    def action_checkbox(self, obj: models.Model) -> str:
        # The markup of ModelAdmin.action_checkbox's CheckboxInput, with its label.
        return format_html('<input type="checkbox" name="{}" value="{}" class="action-select" aria-label="{}">',
                           helpers.ACTION_CHECKBOX_NAME, obj.pk,
                           format_html(_("Select this object for an action - {}"), str(obj)))


def _value(obj: models.Model, name: str) -> Any:
    field = obj._meta.get_field(name)
    if field.many_to_many:
        return sorted(str(o) for o in getattr(obj, name).all()) if obj.pk else []
    value = getattr(obj, field.attname)
    if field.is_relation and value is not None:
        return {"id": value, "name": str(getattr(obj, name))}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


class AuditedAdmin(admin.ModelAdmin):
    """Records <audit_prefix>.create/.update/.delete with the changed fields, before and
    after (secret-named fields are masked by audit.record), in the admin's transaction."""

    audit_prefix = ""

    def _audit_pool(self, obj: models.Model) -> Any:
        return getattr(obj, "pool_id", None)

    def _snapshot(self, obj: models.Model, names: list[str]) -> dict:
        return {n: _value(obj, n) for n in names}

    def save_model(self, request, obj, form, change):
        names = [n for n in form.base_fields if n in {f.name for f in obj._meta.get_fields()}]
        before = self._snapshot(type(obj).objects.get(pk=obj.pk), names) if change else {}
        super().save_model(request, obj, form, change)
        after = self._snapshot(obj, [n for n in names if not obj._meta.get_field(n).many_to_many])
        changed = [n for n in after if not change or before.get(n) != after[n]]
        if changed:
            audit.record(f"{self.audit_prefix}.{'update' if change else 'create'}", target=obj,
                         pool=self._audit_pool(obj), before={n: before[n] for n in changed} if change else None,
                         after={n: after[n] for n in changed}, message="Django admin")

    def delete_model(self, request, obj):
        names = [f.name for f in obj._meta.concrete_fields if f.name != "id"]
        audit.record(f"{self.audit_prefix}.delete", target=obj, pool=self._audit_pool(obj),
                     before=self._snapshot(obj, names), message="Django admin")
        super().delete_model(request, obj)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)

"""Django-admin edits leave the same audit rows as the pages' services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db import models

from apps.audit import services as audit


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

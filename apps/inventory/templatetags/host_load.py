from __future__ import annotations

from django import template

register = template.Library()


@register.filter
def percent_class(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value >= 90:
        return "bad"
    if value >= 75:
        return "warn"
    return "ok"


@register.filter
def used_percent(datastore) -> float | None:
    """How full a datastore is, or None when its capacity is not known."""
    if not datastore.capacity_bytes or datastore.free_bytes is None:
        return None
    return 100.0 * (datastore.capacity_bytes - datastore.free_bytes) / datastore.capacity_bytes

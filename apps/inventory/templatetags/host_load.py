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

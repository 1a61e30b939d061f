from __future__ import annotations

from django import template

from apps.core.permissions import is_admin

register = template.Library()


@register.filter
def is_portal_admin(user) -> bool:
    """The same rule the admin pages enforce (superuser or admin group), for nav links."""
    return bool(user and user.is_authenticated and is_admin(user))


@register.filter
def percent_class(value: float | None) -> str:
    if value is None:
        return "unknown"
    if value >= 90:
        return "bad"
    if value >= 75:
        return "warn"
    return "ok"

from __future__ import annotations

from django import template
from django.contrib.auth.models import AnonymousUser, User

from apps.core.permissions import is_admin

register = template.Library()


@register.filter
def is_portal_admin(user: User | AnonymousUser | None) -> bool:
    """The same rule the admin pages enforce (superuser or admin group), for nav links."""
    return bool(user and user.is_authenticated and is_admin(user))

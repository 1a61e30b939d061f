from __future__ import annotations

from django import template
from django.contrib.auth.models import AnonymousUser, User

from apps.core.permissions import is_admin

register = template.Library()


@register.filter
def is_portal_admin(user: User | AnonymousUser | None) -> bool:
    """The same rule the admin pages enforce (superuser or admin group), for nav links.

    Asked once per request: the navigation and a page's own admin links (the lease page's
    "Capture as template") share the answer, kept on the request's user object."""
    if not (user and user.is_authenticated):
        return False
    answer = getattr(user, "_is_portal_admin", None)
    if answer is None:
        answer = is_admin(user)
        user._is_portal_admin = answer  # type: ignore[attr-defined]
    return answer

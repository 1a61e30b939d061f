"""Who is a vmportal admin: one rule for pages, API and services."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User


def is_admin(user: User | AnonymousUser) -> bool:
    return user.is_superuser or user.groups.filter(name=settings.VMPORTAL_ADMIN_GROUP).exists()

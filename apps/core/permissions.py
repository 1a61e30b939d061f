"""Who is a vmportal admin: one rule for pages, API and services."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def is_admin(user: User | AnonymousUser) -> bool:
    return user.is_superuser or user.groups.filter(name=settings.VMPORTAL_ADMIN_GROUP).exists()


def admin_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """The admin pages' guard: sign-in first, then a page saying why for anyone not an admin."""

    @wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not is_admin(request.user):
            # A page, not a bare 403: engineers following an old link learn why.
            return render(
                request, "403.html",
                {"heading": "Admins only",
                 "message": "This page is for vmportal admins. Ask an admin if you need a pool changed."},
                status=403,
            )
        return view(request, *args, **kwargs)

    return wrapper

"""Who may use the admin pages: vmportal admins (superusers or the admin group)."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.views import redirect_to_login
from django.shortcuts import render

from apps.core.permissions import is_admin


def admin_required(view):
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not is_admin(request.user):
            # A page, not a bare 403: engineers following an old link learn why.
            return render(
                request, "error.html",
                {"message": "This page is for vmportal admins. Ask an admin if you need a pool changed."},
                status=403,
            )
        return view(request, *args, **kwargs)

    return wrapper

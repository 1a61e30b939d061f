"""What a locked-out sign-in gets back (django-axes calls this; settings AXES_LOCKOUT_CALLABLE).

The API's Basic-auth token route answers in JSON with 429 and Retry-After, like its rate
limit; a page gets the sign-in form again with the reason, also 429. Neither says whether
the password was right, so a lockout reveals nothing an attacker could use.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.api.guard import client_ip
from apps.api.http import error, is_api_path


def axes_client_ip(request: HttpRequest) -> str | None:
    """The rate limit's client address (VMPORTAL_TRUSTED_PROXIES), or None when there is none:
    Django's force_login and management commands build requests without REMOTE_ADDR, and
    axes stores the address in an IP column."""
    address = client_ip(request)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return None
    return address


def outage_failure(request: HttpRequest, credentials: dict | None = None) -> bool:
    """AXES_WHITELIST_CALLABLE: a failed sign-in that the directory's outage caused is not counted.

    While the LDAP server is down every directory account fails to sign in; counting those
    would lock out everyone who retries during the outage. A local account with a password
    is judged by vmportal itself, so its failures still count, outage or not: an attacker
    gains nothing from the directory being down.
    """
    if not getattr(request, "directory_unreachable", False):
        return False
    from django.contrib.auth import get_user_model

    username = (credentials or {}).get("username") or ""
    local = get_user_model().objects.filter(username=username).only("password").first()
    return local is None or not local.has_usable_password()


def lockout_message() -> str:
    minutes = int(settings.AXES_COOLOFF_TIME.total_seconds() // 60)
    return (
        f"Too many failed sign-ins for this account from your address: signing in is blocked for "
        f"{minutes} minutes. Wait, or ask an administrator to unlock it (manage.py axes_reset_username)."
    )


def lockout_response(request: HttpRequest, original_response: HttpResponse | None = None,
                     credentials: dict | None = None) -> HttpResponse:
    retry_after = str(int(settings.AXES_COOLOFF_TIME.total_seconds()))
    if is_api_path(request.path):
        return error(lockout_message(), 429, headers={"Retry-After": retry_after})
    username = (credentials or {}).get("username") or ""
    form = AuthenticationForm(request, initial={"username": username})
    response = render(request, "registration/login.html", {"form": form, "lockout": lockout_message(),
                                                          "next": request.POST.get("next", "")}, status=429)
    response["Retry-After"] = retry_after
    return response

"""The OpenID Connect provider's endpoints, from its discovery document unless set outright."""

from __future__ import annotations

import threading
import time

import requests
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from mozilla_django_oidc.utils import import_from_settings

from apps.core.errors import VmPortalError

# Providers rotate keys and move endpoints rarely; an hour keeps a restart-free process current.
DISCOVERY_TTL = 3600
_DISCOVERED = {
    "OIDC_OP_AUTHORIZATION_ENDPOINT": "authorization_endpoint",
    "OIDC_OP_TOKEN_ENDPOINT": "token_endpoint",
    "OIDC_OP_USER_ENDPOINT": "userinfo_endpoint",
    "OIDC_OP_JWKS_ENDPOINT": "jwks_uri",
    "VMPORTAL_OIDC_END_SESSION_ENDPOINT": "end_session_endpoint",
}
_cache: dict[str, tuple[float, dict]] = {}
_lock = threading.Lock()


class ProviderUnavailable(VmPortalError):
    http_status = 503


def enabled() -> bool:
    return bool(getattr(settings, "OIDC_RP_CLIENT_ID", ""))


def provider_name() -> str:
    return getattr(settings, "VMPORTAL_OIDC_PROVIDER_NAME", "single sign-on")


def discovery() -> dict:
    issuer = settings.VMPORTAL_OIDC_ISSUER
    with _lock:
        hit = _cache.get(issuer)
        if hit and time.monotonic() - hit[0] < DISCOVERY_TTL:
            return hit[1]
    url = f"{issuer}/.well-known/openid-configuration"
    try:
        response = requests.get(url, timeout=settings.OIDC_TIMEOUT, verify=settings.OIDC_VERIFY_SSL)
        response.raise_for_status()
        document = response.json()
    except (requests.RequestException, ValueError) as exc:
        raise ProviderUnavailable(
            f"{provider_name()} cannot be reached right now ({type(exc).__name__}), so signing in with it "
            "does not work. Try again in a few minutes; local accounts still work."
        ) from exc
    if str(document.get("issuer", "")).rstrip("/") != issuer:
        # A document naming another issuer would let tokens from it be accepted: refuse it.
        raise ProviderUnavailable(f"{url} names issuer {document.get('issuer')!r}, not {issuer!r} "
                                  "(VMPORTAL_OIDC_ISSUER); check the setting.")
    with _lock:
        _cache[issuer] = (time.monotonic(), document)
    return document


def setting(attr: str, *default):
    """mozilla-django-oidc's get_settings, with endpoints discovered when not set."""
    if attr not in _DISCOVERED or hasattr(settings, attr):
        return import_from_settings(attr, *default)
    value = discovery().get(_DISCOVERED[attr])
    if value:
        return value
    if default:
        return default[0]
    raise ImproperlyConfigured(f"The provider's discovery document has no {_DISCOVERED[attr]}; set it outright.")

"""Who is calling the API.

The API never looks at the session cookie: a browser could be made to send it from
another site, and token and Basic credentials cannot be. That is what makes exempting the
API from CSRF safe.
"""

from __future__ import annotations

import base64
import binascii

from django.contrib.auth import authenticate as django_authenticate
from django.contrib.auth.models import User
from django.http import HttpRequest, JsonResponse

from apps.accounts.messages import UNREACHABLE
from apps.api import tokens
from apps.api.http import error, unauthorized
from apps.api.models import ApiToken
from apps.audit.context import Actor, _current, current_actor


def presented_token(request: HttpRequest) -> str:
    """The token in X-AUTH-TOKEN (vmpooler's header) or an Authorization: Bearer header."""
    raw = request.headers.get("X-AUTH-TOKEN", "").strip()
    if raw:
        return raw
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    return value.strip() if scheme.lower() == "bearer" else ""


def token_user(request: HttpRequest) -> ApiToken | None:
    token = tokens.authenticate(presented_token(request))
    if token is not None:
        bind(request, token.user)
    return token


def token_user_joined(request: HttpRequest, columns: str, join: str,
                      params: list) -> tuple[ApiToken | None, list[tuple]]:
    """token_user(), and the rows a LEFT JOIN adds to the token's, in one statement
    (tokens.authenticate_joined)."""
    token, rows = tokens.authenticate_joined(presented_token(request), columns, join, params)
    if token is not None:
        bind(request, token.user)
    return token, rows


def basic_user(request: HttpRequest) -> User | None:
    """The user named by HTTP Basic credentials, checked by Django's auth backends."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        username, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not sep:
        return None
    user = django_authenticate(request, username=username, password=password)
    if not isinstance(user, User):
        return None  # nobody signed in (every backend of the project answers with the auth User)
    bind(request, user)
    return user


def basic_refusal(request: HttpRequest) -> JsonResponse:
    """The answer when Basic credentials signed nobody in: 503 if the directory did not answer."""
    if getattr(request, "directory_unreachable", False):
        return error(UNREACHABLE, 503, headers={"Retry-After": "60"})
    return unauthorized("Send your username and password with HTTP Basic auth.", 'Basic realm="vmportal"')


def bind(request: HttpRequest, user: User) -> None:
    """Make ``user`` the actor of this request, for permission checks and the audit log.

    AuditContextMiddleware set an anonymous actor before the view ran (it cannot see
    token auth) and restores the previous actor when the response leaves, so replacing
    it here lasts exactly as long as the request.
    """
    request.user = user
    _current.set(Actor(user_id=user.pk, name=user.get_username(), request_id=current_actor().request_id))

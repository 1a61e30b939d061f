"""The short way through for API calls that present a token.

A token-authenticated call under /api/v1/, /api/v2/ or /api/v3/ never reads the session,
the signed-in user, messages or a CSRF cookie (apps.api.auth: the API trusts only its
headers), yet the full middleware list parsed, wrapped and checked all of that on every
call: most of an API checkout's CPU. So this middleware, placed right after
SecurityMiddleware, serves such a call itself: the API guard's limits, the audit actor and
request id, the view, X-Frame-Options. Everything else (pages, /api/tokens/, Basic auth,
a call with only a session cookie) goes through the full list, CSRF included. A forged
cross-site request cannot carry a token header, which is why skipping CSRF here is safe.
The token is still read from the database on every call, so a revoked one fails at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache

from django.conf import settings
from django.contrib.auth.models import AnonymousUser
from django.http import HttpRequest, HttpResponseBase
from django.urls import Resolver404, ResolverMatch, URLResolver, get_resolver, get_urlconf

from apps.api.auth import presented_token
from apps.api.guard import refusal
from apps.api.http import OUTAGES, error, outage_error
from apps.audit.context import Actor, _current, new_request_id

log = logging.getLogger(__name__)
PREFIXES = ("/api/v1/", "/api/v2/", "/api/v3/")


class TokenApiMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        if not request.path.startswith(PREFIXES) or not presented_token(request):
            return self.get_response(request)
        request_id = request.headers.get("X-Request-ID", "")[:64] or new_request_id()
        # Anonymous until the view checks the token (apps.api.auth.bind), as
        # AuditContextMiddleware leaves it on the full path.
        reset = _current.set(Actor(user_id=None, name="anonymous", request_id=request_id))
        try:
            request.user = AnonymousUser()
            response = refusal(request) or _view(request)
        finally:
            _current.reset(reset)
        response["X-Request-ID"] = request_id
        if "X-Frame-Options" not in response:
            response["X-Frame-Options"] = settings.X_FRAME_OPTIONS
        if not response.streaming and "Content-Length" not in response:
            response["Content-Length"] = str(len(response.content))  # type: ignore[attr-defined]
        return response


@lru_cache(maxsize=1024)
def _resolve(resolver: URLResolver, path: str) -> ResolverMatch:
    # CI calls the same few paths over and over; walking the URL patterns for each was 5%
    # of a checkout's CPU. Keyed by the resolver too: a changed ROOT_URLCONF is a new one.
    return resolver.resolve(path)


def _view(request: HttpRequest) -> HttpResponseBase:
    try:
        match = _resolve(get_resolver(get_urlconf()), request.path_info)
    except Resolver404:  # the /api/ catch-all answers every other path; kept for safety
        return error("No such API endpoint.", 404)
    request.resolver_match = match
    try:
        response = match.func(request, *match.args, **match.kwargs)
        if callable(getattr(response, "render", None)):
            response = response.render()
    except OUTAGES as exc:
        return outage_error(request, exc)
    except Exception:
        log.exception("API request failed: %s %s", request.method, request.path)
        return error("Internal error; it has been logged.", 500)
    if not isinstance(response, HttpResponseBase):
        log.error("API view for %s returned %r, not a response", request.path, type(response))
        return error("Internal error; it has been logged.", 500)
    return response


"""The site's error pages (400, 403, 404, 500, a refused CSRF check) and /favicon.ico.

Pages get vmportal's own pages, with the navigation where a request is at hand; API paths
keep answering JSON ({"ok": false, "error": …}), as their views and the /api/ catch-all do,
so a client never has to parse HTML. Each page falls back to a plainer rendering when the
full one fails (a 404 while the database is down must not become a 500).
"""

from __future__ import annotations

import logging

from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.template import loader
from django.templatetags.static import static
from django.views.decorators.cache import cache_control
from django.views.decorators.csrf import requires_csrf_token
from django.views.decorators.http import require_safe

from apps.api.http import error, is_api_path

log = logging.getLogger(__name__)

def _page(request: HttpRequest, template: str, status: int, context: dict | None = None) -> HttpResponse:
    try:
        return render(request, template, context or {}, status=status)
    except Exception:
        # The navigation and its context processors read the database and the session; the
        # page still shows without them (signed-out look) rather than turning into a 500.
        log.exception("The %s page could not be rendered with its request; rendering it without", status)
        return HttpResponse(loader.get_template(template).render(context or {}), status=status)


def _reason(exception: Exception | None) -> str:
    """An Http404/PermissionDenied's own message; the URL resolver's (a dict) is not one."""
    message = exception.args[0] if exception is not None and exception.args else ""
    return message if isinstance(message, str) else ""


@requires_csrf_token
def bad_request(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return error("Bad request.", 400)
    return _page(request, "400.html", 400)


@requires_csrf_token
def permission_denied(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return error(_reason(exception) or "Permission denied.", 403)
    return _page(request, "403.html", 403, {"message": _reason(exception)})


@requires_csrf_token
def page_not_found(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    if is_api_path(request.path):
        return error(_reason(exception) or "No such API endpoint.", 404)
    return _page(request, "404.html", 404, {"message": _reason(exception)})


def server_error(request: HttpRequest) -> HttpResponse:
    # Nothing that could have failed (database, session, templates' context): 500.html is
    # self-contained and rendered with an empty context, as Django's own handler does.
    if is_api_path(request.path):
        return error("Internal error; it has been logged.", 500)
    return HttpResponse(loader.get_template("500.html").render(), status=500)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """CSRF_FAILURE_VIEW: the usual cause is a page left open across a sign-in, a sign-out or
    an expired session, so the page says what to do about it."""
    if is_api_path(request.path):
        return error(f"CSRF check failed: {reason} Send an API token instead of the session cookie.", 403)
    back = request.path if request.method == "GET" else request.headers.get("Referer", "")
    # Only a same-site address is offered as the page to reload.
    reload = back if back.startswith("/") and not back.startswith("//") else ""
    if not reload and back.startswith(f"{request.scheme}://{request.get_host()}/"):
        reload = back
    return _page(request, "403.html", 403, {
        "heading": "This form has expired",
        "message": "vmportal could not check that this request came from its own page: the page was "
                   "probably open from before you signed in or out, or your session ended. "
                   "Reload the page and try again.",
        "detail": f"Reason: {reason}" if reason else "",
        "reload": reload,
    })


@login_not_required
@require_safe
@cache_control(max_age=86400, public=True)
def favicon(request: HttpRequest) -> HttpResponse:
    """Browsers ask for /favicon.ico whatever the page links; send them to the SVG."""
    return HttpResponseRedirect(static("vmportal/favicon.svg"))

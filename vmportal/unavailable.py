"""Redis or PostgreSQL down is a clear 503, never a 500.

Most of what needs Redis already carries on without it: sessions fall back to the
database, the API's rate limits fail open, a job stays queued in its row until Redis is
back, a lost nudge only delays a reconcile. Whatever still reaches a view as a Redis
error (a queue read, a new caller that forgot) becomes a 503 that says what is wrong and
when to try again: JSON under /api/, a page elsewhere.

The database likewise: a connection that PostgreSQL dropped mid-request (a restart, a
failover, an administrator's terminate), or a statement it gave up on as a transient
conflict (a lock or statement timeout, a deadlock it broke), is Django's OperationalError
or InterfaceError. The server rolled its transaction back (unless its COMMIT had gone
through, which the answer says to check); Django drops the broken connection at the end
of the request and the next one opens a new one. Constraint and programming errors are
not outages: they stay 500s, logged with their traceback. The API's own views answer
these themselves (apps.api.http.outage_error); this middleware answers for pages.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from apps.api.http import OUTAGES, RETRY_AFTER, is_api_path, outage_error, outage_message


def unavailable_page(request: HttpRequest, message: str) -> HttpResponse:
    try:
        response = render(request, "error.html", {"message": message}, status=503)
    except Exception:  # the page itself needed Redis or the database: plain text still says it
        response = HttpResponse(message, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = RETRY_AFTER
    return response


class UnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OUTAGES):
            return None
        if is_api_path(request.path):
            return outage_error(request, exception)
        return unavailable_page(request, outage_message(request, exception))

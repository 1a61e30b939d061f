"""Redis down is a clear 503, never a 500.

Most of what needs Redis already carries on without it: sessions fall back to the
database, the API's rate limits fail open, a job stays queued in its row until Redis is
back, a lost nudge only delays a reconcile. Whatever still reaches a view as a Redis
error (a queue read, a new caller that forgot) becomes a 503 that says what is wrong and
when to try again: JSON under /api/, a page elsewhere.
"""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from redis.exceptions import RedisError

from apps.api.http import error, is_api_path

log = logging.getLogger(__name__)
RETRY_AFTER = "30"
MESSAGE = "The job queue (Redis) is unavailable right now, so this could not be done. Try again in a minute."


def unavailable_response(request: HttpRequest) -> HttpResponse:
    if is_api_path(request.path):
        return error(MESSAGE, 503, headers={"Retry-After": RETRY_AFTER})
    try:
        response = render(request, "error.html", {"message": MESSAGE}, status=503)
    except Exception:  # the page itself needed Redis: plain text still says it
        response = HttpResponse(MESSAGE, status=503, content_type="text/plain; charset=utf-8")
    response["Retry-After"] = RETRY_AFTER
    return response


class RedisUnavailableMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, RedisError):
            return None
        log.warning("%s %s answered 503, Redis unavailable: %s", request.method, request.path, exception)
        return unavailable_response(request)

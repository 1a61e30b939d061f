"""One answer to "does this request want the live fragment or the whole page?" (STYLE.md: one
view serves both), and the polled fragment that tells htmx when to stop asking."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django_htmx.http import HttpResponseStopPolling


def htmx_partial(request: HttpRequest) -> bool:
    """True for an htmx request (a poll, an hx-get or hx-post) that swaps in a fragment.

    A boosted link or form is an htmx request too, but it swaps the whole body, so it gets the page.
    """
    htmx = getattr(request, "htmx", None)
    if not htmx:
        return False
    return not htmx.boosted


def render_polled(request: HttpRequest, template: str, context: dict[str, Any], *, settled: bool) -> HttpResponse:
    """The polled fragment; once ``settled`` (nothing on it will change by itself) as
    HttpResponseStopPolling (286), which htmx still swaps in and then stops polling."""
    content = render_to_string(template, context, request)
    return HttpResponseStopPolling(content) if settled else HttpResponse(content)

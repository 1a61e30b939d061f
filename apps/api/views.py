"""Pages: managing one's API tokens, and the API's documentation."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.api import tokens
from apps.api.models import ApiToken
from apps.api.native import api
from apps.core.errors import VmPortalError

LIFETIME_CHOICES = {"7": 7, "30": 30, "90": 90, "365": 365}


def token_list(request: HttpRequest) -> HttpResponse:
    """The signed-in user's tokens; a new token's clear text shows here once, after creating it."""
    new_token = request.session.pop("api_new_token", None)
    mine = ApiToken.objects.filter(user=request.user)
    return render(request, "api/tokens.html", {
        "tokens": mine, "new_token": new_token, "lifetime_choices": LIFETIME_CHOICES,
    })


@require_POST
def token_create(request: HttpRequest) -> HttpResponse:
    days = LIFETIME_CHOICES.get(request.POST.get("days", ""))
    try:
        _, raw = tokens.create_token(user=request.user, name=request.POST.get("name", ""),
                                     lifetime=timedelta(days=days) if days else None)
    except VmPortalError as exc:
        messages.error(request, str(exc))
        return redirect("api-tokens")
    # Through the session rather than the redirect URL, so the token stays out of logs and
    # history; popped on the next view, so it is shown exactly once.
    request.session["api_new_token"] = raw
    return redirect("api-tokens")


@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    tokens.revoke_token(user=request.user, token=token)
    messages.success(request, f"Token {token.name} ({token.prefix}…) revoked.")
    return redirect("api-tokens")


def docs(request: HttpRequest) -> HttpResponse:
    """How to authenticate, Swagger UI over the native API's schema (django-ninja's bundled copy,
    served from our static files), the same operations as a plain list, and the vmpooler routes."""
    schema = api.get_openapi_schema(path_prefix="/api/v1")
    operations = [
        {"method": method.upper(), "path": path, "summary": op.get("summary", ""),
         "body": bool(op.get("requestBody")), "tags": ", ".join(op.get("tags", []))}
        for path, item in schema["paths"].items() for method, op in item.items()
    ]
    return render(request, "api/docs.html", {"operations": operations, "schema_url": reverse("api-v1:openapi-json")})

"""vmpooler's /token routes: create and list tokens with a password, a token's status, revoke."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse

from apps.api import auth, tokens
from apps.api.decorators import api_view
from apps.api.http import ApiError, json_body, ok
from apps.api.models import ApiToken
from apps.leases.models import Lease


def _token_info(token: ApiToken) -> dict:
    return {
        "name": token.name,
        "created": token.created.isoformat(),
        "last": token.last_used_at.isoformat() if token.last_used_at else "",
        "expires": token.expires_at.isoformat() if token.expires_at else "",
    }


def _token_create(request: HttpRequest) -> HttpResponse:
    body = json_body(request, required=False)
    name = body.get("name", "vmpooler") if isinstance(body, dict) else "vmpooler"
    _, raw = tokens.create_token(user=request.user, name=str(name))
    return ok({"token": raw})


def _token_list(request: HttpRequest) -> HttpResponse:
    # vmpooler keys this by token; we only keep hashes, so by each token's prefix.
    mine = ApiToken.objects.usable().filter(user=request.user)
    return JsonResponse({f"{t.prefix}…": _token_info(t) for t in mine})


token_collection = api_view(auth_by="basic")({"POST": _token_create, "GET": _token_list})


def _token_status(request: HttpRequest, raw: str) -> HttpResponse:
    # Knowing the token is the credential here, as in vmpooler (vmfloaty sends no other).
    token = tokens.authenticate(raw)
    if token is None:
        raise ApiError("No such token.", 404)
    running = Lease.objects.active().filter(user=token.user).values_list("vm__name", flat=True)
    # "ok" beside the entry, as vmpooler: vmfloaty treats an answer without it as an error.
    return ok({raw: {"user": token.user.get_username(), **_token_info(token), "vms": {"running": list(running)}}})


def _token_delete(request: HttpRequest, raw: str) -> HttpResponse:
    if auth.basic_user(request) is None:
        return auth.basic_refusal(request)
    tokens.revoke_token(user=request.user, token=tokens.find_token(raw))
    return ok()


token_item = api_view(auth_by="handler")({"GET": _token_status, "DELETE": _token_delete})

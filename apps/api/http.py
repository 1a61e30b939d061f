"""JSON responses and errors shared by the vmpooler-compatible views and the guard."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest, JsonResponse

from apps.core.errors import VmPortalError


class ApiError(VmPortalError):
    """A request problem with a status and optional extra body fields."""

    def __init__(self, message: str, status: int = 400, **extra: Any):
        super().__init__(message)
        self.http_status = status
        self.extra = extra


def ok(data: dict | list | None = None, status: int = 200) -> JsonResponse:
    body: Any = {"ok": True, **(data or {})} if not isinstance(data, list) else data
    return JsonResponse(body, status=status, safe=False)


def error(message: str, status: int, headers: dict | None = None, **extra: Any) -> JsonResponse:
    response = JsonResponse({"ok": False, "error": message, **extra}, status=status)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def unauthorized(message: str = "Authentication required: send an X-AUTH-TOKEN header.",
                 scheme: str = 'Bearer realm="vmportal"') -> JsonResponse:
    return error(message, 401, headers={"WWW-Authenticate": scheme})


def json_body(request: HttpRequest, *, required: bool = True) -> Any:
    """The parsed JSON body (the guard has already refused oversized ones)."""
    if not required and request.content_type != "application/json":
        return {}  # an optional body: clients like vmfloaty POST nothing, or a form encoding
    if not request.body:
        if required:
            raise ApiError("Send a JSON body.")
        return {}
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(f"The body is not valid JSON: {exc}") from None

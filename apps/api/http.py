"""JSON responses and errors shared by the vmpooler-compatible views and the guard."""

from __future__ import annotations

import json
import logging
import re
from datetime import timedelta
from typing import Any

from django.http import HttpRequest, JsonResponse
from redis.exceptions import RedisError

from apps.core.errors import DATABASE_OUTAGES, VmPortalError

log = logging.getLogger(__name__)


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


# Redis or PostgreSQL away (see vmportal.unavailable): a 503 that says so, never a 500.
OUTAGES = (RedisError, *DATABASE_OUTAGES)
RETRY_AFTER = "30"
REDIS_MESSAGE = "The job queue (Redis) is unavailable right now, so this could not be done. Try again in a minute."
DATABASE_MESSAGE = ("The database did not answer or dropped the connection, so this could not be done. "
                    "Try again in a minute; if you were changing something, check first whether it went through.")


def outage_message(request: HttpRequest, exc: Exception) -> str:
    """What to tell the person whose request met one of OUTAGES; logged here as a warning."""
    what = "Redis unavailable" if isinstance(exc, RedisError) else "database unavailable"
    log.warning("%s %s answered 503, %s: %s", request.method, request.path, what, str(exc).strip())
    return REDIS_MESSAGE if isinstance(exc, RedisError) else DATABASE_MESSAGE


def outage_error(request: HttpRequest, exc: Exception) -> JsonResponse:
    return error(outage_message(request, exc), 503, headers={"Retry-After": RETRY_AFTER})


# Pages a person opens in a browser that live under /api/; everything else there is the API.
_API_PAGES = ("/api/docs/", "/api/tokens/")


def is_api_path(path: str) -> bool:
    """Whether a request to ``path`` is from a program: answered in JSON, never a page.

    The API under /api/ (but not its pages: the docs and the token list), the Prometheus
    /metrics and vmpooler's /dashboard/stats/ routes. Error pages, the Redis-down answer, the
    sign-in lockout and the rate limits all decide with this one test."""
    if path.startswith("/api/"):
        return not path.startswith(_API_PAGES)
    return path == "/metrics" or path.startswith("/dashboard/stats/")


def unauthorized(message: str = "Authentication required: send an X-AUTH-TOKEN header.",
                 scheme: str = 'Bearer realm="vmportal"') -> JsonResponse:
    return error(message, 401, headers={"WWW-Authenticate": scheme})


_WHOLE = re.compile(r"-?[0-9]+")
# Beyond any count, size or number of hours we take, and small enough for timedelta and SQL.
_LARGEST = 999_999_999


def as_hours(delta: timedelta) -> float:
    """A duration as both APIs show it: hours, to two decimals."""
    return round(delta.total_seconds() / 3600, 2)


def strict_int(value: object, what: str) -> int:
    """A whole number from a JSON number or a string of ASCII digits.

    int() alone also takes Unicode digits ("٣"), underscores ("1_0") and surrounding
    whitespace, and a float it would truncate."""
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    elif isinstance(value, str) and _WHOLE.fullmatch(value) and len(value) <= 12:
        n = int(value)
    elif isinstance(value, str) and _WHOLE.fullmatch(value):
        n = _LARGEST + 1
    else:
        raise ApiError(f"{what}: {str(value)[:32]!r} is not a whole number.")
    if abs(n) > _LARGEST:
        raise ApiError(f"{what}: {str(value)[:32]} is far too large.")
    return n


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows")


def strict_json(raw: bytes | str) -> Any:
    """json.loads without NaN and Infinity, which Python's parser accepts but JSON does not."""
    return json.loads(raw, parse_constant=_refuse_constant)


def is_json(request: HttpRequest) -> bool:
    ctype = (request.content_type or "").lower()
    return ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))


def json_body(request: HttpRequest, *, required: bool = True) -> Any:
    """The parsed JSON body (the guard has already refused oversized ones).

    Any content type is read as JSON here, unlike the native API: vmfloaty's HTTP library
    labels the JSON it sends application/x-www-form-urlencoded."""
    if not required and request.content_type != "application/json":
        return {}  # an optional body: clients like vmfloaty POST nothing, or a form encoding
    if not request.body:
        if required:
            raise ApiError("Send a JSON body.")
        return {}
    try:
        return strict_json(request.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(f"The body is not valid JSON: {exc}") from None

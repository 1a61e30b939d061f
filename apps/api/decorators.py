from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from apps.api import auth
from apps.api.http import OUTAGES, ApiError, error, outage_error, unauthorized
from apps.core.errors import VmPortalError
from apps.core.permissions import is_admin

log = logging.getLogger(__name__)


def api_view(*, auth_by: str = "token", admin: bool = False, public: tuple[str, ...] = ()) -> Callable:
    """A JSON endpoint: auth by "token", "basic" or "handler" (the handler does it), JSON errors only.

    Methods in ``public`` are the reads vmpooler serves without a token: anyone may call
    them while VMPORTAL_API_PUBLIC_READS is on (a valid token still says who is asking).

    CSRF is off because these views never read the session (see apps.api.auth); the
    login middleware is bypassed because they answer 401 in JSON instead of redirecting.
    Views are dicts of method -> function, so 405 is JSON too.
    """

    def wrap(handlers: dict[str, Callable]) -> Callable:
        @login_not_required
        @csrf_exempt
        @functools.wraps(next(iter(handlers.values())))
        def view(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            handler = handlers.get(request.method)
            if handler is None:
                response = error(f"{request.method} is not allowed here.", 405)
                response["Allow"] = ", ".join(handlers)
                return response
            if auth_by == "token":
                if auth.token_user(request) is None and not (
                    request.method in public and settings.VMPORTAL_API_PUBLIC_READS
                ):
                    return unauthorized()
            elif auth_by == "basic" and auth.basic_user(request) is None:
                return auth.basic_refusal(request)
            if admin and not is_admin(request.user):
                return error("This needs an admin's token.", 403)
            try:
                return handler(request, *args, **kwargs)
            except ApiError as exc:
                return error(str(exc), exc.http_status, **exc.extra)
            except VmPortalError as exc:
                return error(str(exc), exc.http_status)
            except OUTAGES as exc:
                return outage_error(request, exc)
            except Exception:
                log.exception("API request failed: %s %s", request.method, request.path)
                return error("Internal error; it has been logged.", 500)

        return view

    return wrap

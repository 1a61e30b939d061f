from __future__ import annotations

from apps.audit.context import SYSTEM, Actor, _current, new_request_id


class AuditContextMiddleware:
    """Makes the signed-in user and a request id available to services that audit."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request_id = request.headers.get("X-Request-ID", "")[:64] or new_request_id()
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            actor = Actor(user_id=user.pk, name=user.get_username(), request_id=request_id)
        else:
            actor = Actor(user_id=None, name="anonymous", request_id=request_id)
        token = _current.set(actor)
        try:
            response = self.get_response(request)
        finally:
            _current.reset(token)
        response["X-Request-ID"] = request_id
        return response


__all__ = ["AuditContextMiddleware", "SYSTEM"]

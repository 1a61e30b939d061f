from __future__ import annotations

from typing import Any

from django.db import models

from apps.audit.context import current_actor
from apps.audit.models import AuditEvent

# Keys whose values never reach the audit log, whatever a caller passes.
_SECRET_WORDS = ("password", "secret", "token", "key", "private")


def _scrub(data: Any) -> Any:
    if isinstance(data, dict):
        return {
            k: "********" if any(w in str(k).lower() for w in _SECRET_WORDS) else _scrub(v)
            for k, v in data.items()
        }
    if isinstance(data, list | tuple):
        return [_scrub(v) for v in data]
    return data


def record(
    action: str,
    *,
    target: models.Model | None = None,
    pool: Any = None,
    before: dict | None = None,
    after: dict | None = None,
    message: str = "",
) -> AuditEvent:
    """Write one audit event. Call it inside the transaction of the change it describes."""
    actor = current_actor()
    return AuditEvent.objects.create(
        actor_id=actor.user_id,
        actor_name=actor.name,
        request_id=actor.request_id,
        action=action,
        target_type=target._meta.label_lower if target is not None else "",
        target_id=str(target.pk) if target is not None else "",
        target_repr=str(target)[:255] if target is not None else "",
        pool_id=getattr(pool, "pk", pool),
        before=_scrub(before),
        after=_scrub(after),
        message=message,
    )

"""Who is acting, for audit events written deep inside services (see apps.core.context)."""

from apps.core.context import SYSTEM, Actor, _current, acting_as, current_actor, new_request_id

__all__ = ["SYSTEM", "Actor", "_current", "acting_as", "current_actor", "new_request_id"]

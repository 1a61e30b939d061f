"""Who is acting: a person (per request) or a job (per job run).

Set per request by AuditContextMiddleware and per job by the job runner; contextvars
keep concurrent requests (threads or async tasks) apart. It lives in core because
transition() records the actor of every state change, and core imports nothing above it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Actor:
    user_id: int | None
    name: str
    request_id: str = ""
    job_id: int | None = None


SYSTEM = Actor(user_id=None, name="system")
_current: ContextVar[Actor] = ContextVar("vmportal_actor", default=SYSTEM)


def current_actor() -> Actor:
    return _current.get()


@contextmanager
def acting_as(actor: Actor) -> Iterator[Actor]:
    token = _current.set(actor)
    try:
        yield actor
    finally:
        _current.reset(token)


def new_request_id() -> str:
    return uuid.uuid4().hex[:16]

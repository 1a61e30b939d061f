"""One way to change a status: a conditional UPDATE guarded by an allowed-transition map.

A worker and a web request may try to move the same row at once (a VM finishing its
boot while its pool is drained). The UPDATE only matches when the row is still in the
state the caller saw, so exactly one of them wins and the other gets StaleState instead
of silently overwriting the first.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import models
from django.utils import timezone


class TransitionError(Exception):
    """Base for refused status changes."""


class IllegalTransition(TransitionError):
    def __init__(self, obj: models.Model, old: str, new: str):
        self.obj, self.old, self.new = obj, old, new
        super().__init__(f"{obj._meta.verbose_name} {obj}: {old} → {new} is not allowed.")


class StaleState(TransitionError):
    def __init__(self, obj: models.Model, old: str, new: str):
        self.obj, self.old, self.new = obj, old, new
        super().__init__(
            f"{obj._meta.verbose_name} {obj} is no longer {old}; someone else changed it "
            f"before it could become {new}."
        )


def transition(
    obj: models.Model,
    new: str,
    *,
    allowed: Mapping[str, frozenset[str]],
    field: str = "state",
    **changes: Any,
) -> None:
    """Move ``obj.<field>`` to ``new`` if the map allows it and nobody moved it first.

    ``changes`` are other columns written in the same UPDATE (a reason, a timestamp).
    The instance is updated in place on success.
    """
    old = getattr(obj, field)
    if new not in allowed.get(old, frozenset()):
        raise IllegalTransition(obj, old, new)
    values = {field: new, **changes}
    if any(f.name == f"{field}_changed_at" for f in obj._meta.fields):
        values[f"{field}_changed_at"] = timezone.now()
    updated = type(obj)._default_manager.filter(pk=obj.pk, **{field: old}).update(**values)
    if updated != 1:
        raise StaleState(obj, old, new)
    for key, value in values.items():
        setattr(obj, key, value)

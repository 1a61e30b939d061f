"""One way to change a status: a conditional UPDATE guarded by an allowed-transition map,
with a history row (apps.core.models.StateChange) written by the same statement.

A worker and a web request may try to move the same row at once (a VM finishing its
boot while its pool is drained, a deploy job finishing while recovery fails it). The
UPDATE only matches when the row is still in the state the caller saw, so exactly one of
them wins and the other gets StaleState instead of silently overwriting the first.

Each stateful model keeps its map (old → allowed new states) and its badge colours
(state → CSS class) beside its choices, and calls transition() from a ``move_to`` method.
A Job row is its own history (times, error, log), so its moves write no StateChange.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import connections, models, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models.sql import UpdateQuery
from django.utils import timezone

from apps.core.context import current_actor
from apps.core.errors import Conflict
from apps.core.models import StateChange

Transitions = Mapping[str, frozenset[str]]


class TransitionError(Conflict):
    """Base for refused status changes: a 409 with a message a person can act on."""

    def __init__(self, obj: models.Model, old: str, new: str, message: str):
        self.obj, self.old, self.new = obj, old, new
        super().__init__(message)


def _name(obj: models.Model) -> str:
    name = str(obj._meta.verbose_name)
    return f"{name[:1].upper()}{name[1:]} {obj}"


class IllegalTransition(TransitionError):
    def __init__(self, obj: models.Model, old: str, new: str):
        super().__init__(obj, old, new, f"{_name(obj)}: {old} → {new} is not allowed.")


class StaleState(TransitionError):
    """Someone else moved the row first. ``current`` is its state now (None: the row is gone)."""

    def __init__(self, obj: models.Model, old: str, new: str, current: str | None):
        self.current = current
        now = "it is gone" if current is None else f"{current} now"
        super().__init__(
            obj, old, new,
            f"{_name(obj)} is no longer {old} ({now}): someone else changed it before it could become "
            f"{new}. Reload to see where it stands.",
        )


_HISTORY_FIELDS = ("at", "model", "object_id", "field", "old", "new", "reason", "actor", "actor_name", "job_id",
                   "request_id")


def _history_values(*, model_label: str, field: str, old: str, new: str, reason: str) -> dict[str, Any]:
    actor = current_actor()
    return {
        "at": timezone.now(), "model": model_label, "field": field, "old": old, "new": new, "reason": reason,
        "actor": actor.user_id, "actor_name": actor.name[:150], "job_id": actor.job_id,
        "request_id": actor.request_id[:64],
    }


def history_sql(connection: BaseDatabaseWrapper, *, object_id: str = "%s") -> str:
    """``INSERT INTO <StateChange table> (...) SELECT ...``: the caller adds ``FROM <moved rows>``
    and passes ``history_params``. ``object_id`` is the SQL of the moved row's id: a
    parameter for one row, or a column of the moved rows for a bulk move (checkout)."""
    table = connection.ops.quote_name(StateChange._meta.db_table)
    column = {f.name: f.column for f in StateChange._meta.concrete_fields}
    columns = ", ".join(connection.ops.quote_name(column[n]) for n in _HISTORY_FIELDS)
    select = ", ".join(object_id if n == "object_id" else "%s" for n in _HISTORY_FIELDS)
    return f"INSERT INTO {table} ({columns}) SELECT {select}"


def history_params(*, model_label: str, field: str, old: str, new: str, reason: str = "",
                   object_id: int | None = None) -> list[Any]:
    """The parameters of ``history_sql``, for the acting person or job; ``object_id`` only
    when it is a parameter there."""
    values = _history_values(model_label=model_label, field=field, old=old, new=new, reason=reason)
    values["object_id"] = object_id
    return [values[n] for n in _HISTORY_FIELDS if n != "object_id" or object_id is not None]


def record_history(model: type[models.Model], ids: list[int], *, field: str, old: str, new: str,
                   reason: str = "") -> None:
    """History rows for a bulk move made by the caller's own SQL, where one statement cannot
    also write them (SQLite has no INSERT inside WITH)."""
    values = _history_values(model_label=model._meta.label_lower, field=field, old=old, new=new, reason=reason)
    values["actor_id"] = values.pop("actor")
    StateChange.objects.bulk_create([StateChange(object_id=pk, **values) for pk in ids])


def transition(
    obj: models.Model,
    new: str,
    *,
    allowed: Transitions,
    field: str = "state",
    history: bool = True,
    where: Mapping[str, Any] | None = None,
    stay: bool = False,
    **changes: Any,
) -> None:
    """Move ``obj.<field>`` to ``new`` if the map allows it and nobody moved it first.

    ``changes`` are other columns written in the same UPDATE (a reason, a timestamp);
    ``<field>_reason``, if given, is also the history row's reason. ``where``: other
    columns that must still hold what the caller saw (a heartbeat), or it is StaleState
    too. ``history=False`` for rows that are their own history (Job): one plain UPDATE.
    ``stay=True`` lets ``new`` be the state it is in: then only ``changes`` are written
    (a new reason, a later retry), still only if it has not moved, and no history row,
    as nothing moved.
    The instance is updated in place on success. Raises IllegalTransition or StaleState
    (both 409s).
    """
    old = getattr(obj, field)
    staying = stay and new == old
    if not staying and new not in allowed.get(old, frozenset()):
        raise IllegalTransition(obj, old, new)
    now = timezone.now()
    values = {field: new, **changes}
    for f in obj._meta.concrete_fields:
        if (f.name == f"{field}_changed_at" and not staying) or getattr(f, "auto_now", False):
            values.setdefault(f.name, now)
    model = type(obj)
    label, reason = model._meta.label_lower, str(changes.get(f"{field}_reason", ""))
    rows = model._default_manager.filter(pk=obj.pk, **{field: old}, **(where or {}))
    db = router.db_for_write(model, instance=obj)
    connection = connections[db]
    if not history or staying:
        updated = rows.update(**values)
    elif connection.vendor == "postgresql":
        # One round trip: the UPDATE and its history row in one statement (VMs move on
        # checkout's hot path), atomic even outside a transaction.
        query = rows.query.chain(UpdateQuery)
        assert isinstance(query, UpdateQuery)  # chain(klass) swaps the class; the stubs cannot say so
        query.add_update_values(values)
        query.clear_select_clause()
        update_sql, update_params = query.get_compiler(db).as_sql()
        with connection.cursor() as cursor:
            cursor.execute(f"WITH moved AS ({update_sql} RETURNING 1) {history_sql(connection)} FROM moved", [
                *update_params,
                *history_params(model_label=label, field=field, old=old, new=new, reason=reason, object_id=obj.pk),
            ])
            updated = cursor.rowcount
    else:
        with transaction.atomic(using=db, savepoint=False):
            updated = rows.update(**values)
            if updated == 1:
                record_history(model, [obj.pk], field=field, old=old, new=new, reason=reason)
    if updated != 1:
        current = model._default_manager.filter(pk=obj.pk).values_list(field, flat=True).first()
        raise StaleState(obj, old, new, current)
    for key, value in values.items():
        if not hasattr(value, "resolve_expression"):  # an F()/Concat() result is the database's to know
            setattr(obj, key, value)

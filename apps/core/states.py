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

from collections.abc import Iterable, Mapping
from typing import Any

from django.db import connections, models, router, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.models import Q
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


def transition_many(
    moves: Iterable[tuple[models.Model, Mapping[str, Any]]],
    new: str,
    *,
    allowed: Transitions,
    field: str = "state",
) -> list[TransitionError]:
    """``transition(obj, new, **changes)`` for each (obj, changes) of one model, in one
    statement on PostgreSQL rather than one per row: what a fill does to a batch of clones.

    The rules are transition()'s: the map decides, a row moves only from the state its
    caller saw, each move gets its history row in the same statement, ``<field>_reason``
    is its reason, ``<field>_changed_at`` and auto_now fields are set. Rows still in their
    old state are locked with SKIP LOCKED, so this never waits while holding other rows
    (no lock-order deadlock with a reconcile holding some of them); a row that was locked
    is moved afterwards by transition() alone, which may wait for it. Returns the refusals
    (IllegalTransition, StaleState), one per object not moved; moved objects are updated in
    place. Expressions (F(), Concat()) are not allowed in ``changes``; foreign keys go by
    their ``<name>_id``.
    """
    errors: list[TransitionError] = []
    wanted: dict[Any, tuple[models.Model, str, dict[str, Any]]] = {}
    for obj, changes in moves:
        old = getattr(obj, field)
        if new not in allowed.get(old, frozenset()):
            errors.append(IllegalTransition(obj, old, new))
        else:
            wanted[obj.pk] = (obj, old, dict(changes))
    if not wanted:
        return errors
    first = next(iter(wanted.values()))[0]
    model = type(first)
    db = router.db_for_write(model, instance=first)
    now = timezone.now()
    for _, _, values in wanted.values():
        for f in model._meta.concrete_fields:
            if f.name == f"{field}_changed_at" or getattr(f, "auto_now", False):
                values.setdefault(f.name, now)
    # One statement per set of columns written (a batch's moves usually share one).
    groups: dict[tuple[str, ...], list[Any]] = {}
    for pk, (_, _, values) in wanted.items():
        groups.setdefault(tuple(sorted(values)), []).append(pk)
    moved: set[Any] = set()
    for names, pks in groups.items():
        rows = [(pk, wanted[pk][1], wanted[pk][2]) for pk in sorted(pks)]
        if connections[db].vendor == "postgresql":
            moved |= _move_many_postgresql(db, model, field, new, names, rows)
        else:
            moved |= _move_many_orm(db, model, field, new, names, rows)
    for pk, (obj, _, values) in wanted.items():
        if pk in moved:
            setattr(obj, field, new)
            for name, value in values.items():
                setattr(obj, name, value)
            continue
        # Locked by someone else, moved, or gone: the one-row path waits for it or says which.
        try:
            transition(obj, new, allowed=allowed, field=field, **values)
        except TransitionError as exc:
            errors.append(exc)
    return errors


def _move_many_postgresql(db: str, model: type[models.Model], field: str, new: str, names: tuple[str, ...],
                          rows: list[tuple[Any, str, dict[str, Any]]]) -> set[Any]:
    connection = connections[db]
    qn = connection.ops.quote_name
    meta = model._meta
    # By name and by attname (``host_id``): a caller may write either.
    by_name: dict[str, Any] = {f.name: f for f in meta.concrete_fields} | {f.attname: f for f in meta.concrete_fields}
    pk_field, state = by_name[meta.pk.name], by_name[field]
    columns = [(name, by_name[name]) for name in names]
    table, pk = qn(meta.db_table), qn(pk_field.column)
    value_columns = ", ".join([pk, '"_old"', '"_reason"', *(qn(c.column) for _, c in columns)])
    casts = [pk_field.cast_db_type(connection), state.cast_db_type(connection), "text",
             *(c.cast_db_type(connection) for _, c in columns)]
    row_sql = "(" + ", ".join(f"%s::{cast}" for cast in casts) + ")"
    params: list[Any] = []
    for row_pk, old, values in rows:
        params += [row_pk, old, str(values.get(f"{field}_reason", "")),
                   *(c.get_db_prep_save(values[name], connection) for name, c in columns)]
    sets = ", ".join([f"{qn(state.column)} = %s", *(f"{qn(c.column)} = data.{qn(c.column)}" for _, c in columns)])
    history_table = qn(StateChange._meta.db_table)
    history_column = {f.name: f.column for f in StateChange._meta.concrete_fields}
    from_moved = {"object_id": "moved.id", "old": 'moved."_old"', "reason": 'moved."_reason"'}
    history = _history_values(model_label=meta.label_lower, field=field, old="", new=new, reason="")
    # Names come from the models' meta, every value is a parameter.
    sql = (
        f"WITH data ({value_columns}) AS (VALUES {', '.join([row_sql] * len(rows))}), "  # noqa: S608
        f"locked AS (SELECT t.{pk} FROM {table} t JOIN data ON t.{pk} = data.{pk} AND t.{qn(state.column)} = "
        f'data."_old" FOR NO KEY UPDATE OF t SKIP LOCKED), '
        f"moved AS (UPDATE {table} SET {sets} FROM data WHERE {table}.{pk} = data.{pk} "
        f"AND {table}.{pk} IN (SELECT {pk} FROM locked) "
        f'RETURNING {table}.{pk} AS id, data."_old", data."_reason") '
        f"INSERT INTO {history_table} ({', '.join(qn(history_column[n]) for n in _HISTORY_FIELDS)}) "
        f"SELECT {', '.join(from_moved.get(n, '%s') for n in _HISTORY_FIELDS)} FROM moved RETURNING "
        f"{qn(history_column['object_id'])}"
    )
    params += [new]
    params += [history[n] for n in _HISTORY_FIELDS if n not in from_moved]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return {row[0] for row in cursor.fetchall()}


def _move_many_orm(db: str, model: type[models.Model], field: str, new: str, names: tuple[str, ...],
                   rows: list[tuple[Any, str, dict[str, Any]]]) -> set[Any]:
    """Other databases (SQLite, which serialises writers): lock, one UPDATE per row, the
    history rows in one INSERT, in one transaction."""
    still = Q()
    for row_pk, old, _ in rows:
        still |= Q(pk=row_pk, **{field: old})
    label = model._meta.label_lower
    with transaction.atomic(using=db):
        locked = set(model._default_manager.using(db).filter(still).select_for_update(skip_locked=True)
                     .values_list("pk", flat=True))
        history = []
        for row_pk, old, values in rows:
            if row_pk in locked:
                model._default_manager.using(db).filter(pk=row_pk).update(**{field: new, **values})
                values_ = _history_values(model_label=label, field=field, old=old, new=new,
                                          reason=str(values.get(f"{field}_reason", "")))
                values_["actor_id"] = values_.pop("actor")
                history.append(StateChange(object_id=row_pk, **values_))
        StateChange.objects.using(db).bulk_create(history)
    return locked

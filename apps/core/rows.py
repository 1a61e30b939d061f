"""Model instances from rows read by hand-written SQL, as the ORM would have loaded them.

Hot paths (checkout, the API's token and pool lookups) read their rows with one statement of
their own: a raw() queryset's or select_related's per-query setup cost more in Python than
the query did in PostgreSQL. Model.from_db alone would skip the database's converters, which
matter off PostgreSQL: SQLite (the demo) returns durations as integers and datetimes as
text. So each value goes through the field's converters, as the SQL compiler does.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any, TypeVar

from django.db import connection
from django.db.models import Model

M = TypeVar("M", bound=Model)


@cache
def _loading(model: type[Model], vendor: str) -> tuple[list[str], list[tuple[Any, list]]]:
    """Per field: its column expression and converters, as the SQL compiler finds them."""
    fields: list[Any] = list(model._meta.concrete_fields)  # the stubs lack Field.get_col
    cols = [f.get_col(model._meta.db_table) for f in fields]
    converters = [(col, connection.ops.get_db_converters(col) + col.get_db_converters(connection)) for col in cols]
    return [f.attname for f in fields], converters


def width(model: type[Model]) -> int:
    """How many of a row's values load() takes for this model."""
    return len(model._meta.concrete_fields)


def load(model: type[M], values: Sequence[Any]) -> M:
    """An instance of ``model`` from its concrete fields' values, in field order."""
    names, converters = _loading(model, connection.vendor)
    converted = list(values[: len(names)])
    for i, (col, col_converters) in enumerate(converters):
        for convert in col_converters:
            converted[i] = convert(converted[i], col, connection)
    return model.from_db(connection.alias, names, converted)

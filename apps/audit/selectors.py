"""Read side of the audit log pages: search, keyset pages, one event's diff."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.db.models import Func, Q, QuerySet, TextField, Value
from django.db.models.functions import Upper
from django.db.models.lookups import Contains
from django.utils.dateparse import parse_datetime

from apps.audit.models import AuditEvent


class SearchText(Func):
    """What ?q= matches: the searchable columns as one upper-cased text. It is the expression
    of the trigram index audit_search_trgm (migration 0004), character for character, so a
    search over a million events is an index scan rather than five LIKEs over every row."""

    template = ("UPPER(\"audit_auditevent\".\"actor_name\" || ' ' || \"audit_auditevent\".\"action\" || ' ' || "
                "\"audit_auditevent\".\"target_repr\" || ' ' || \"audit_auditevent\".\"message\" || ' ' || "
                "\"audit_auditevent\".\"request_id\")")
    output_field = TextField()


def filter_audit(*, actor: str = "", action: str = "", pool_id: int | None = None,
                 since: datetime | None = None, until: datetime | None = None, q: str = "") -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.all()
    if actor:
        events = events.filter(actor_name=actor)
    if action:
        # "pool." finds every pool action; a full name finds just that one.
        events = events.filter(action__startswith=action)
    if pool_id is not None:
        events = events.filter(pool_id=pool_id)
    if since is not None:
        events = events.filter(at__gte=since)
    if until is not None:
        events = events.filter(at__lt=until)
    if q:
        events = events.filter(Contains(SearchText(), Upper(Value(q))))
    return events.order_by("-at", "-id")


# The columns the list sorts by: the field each orders by first. Every one is served by an
# index that goes on with the time (at: its own; actor: (actor_name, -at); action and target:
# migration 0005), so a sorted page is an index range scan over 1M events, never a sort of them.
SORT_FIELDS = {"at": "at", "actor": "actor_name", "action": "action", "target": "target_repr"}
DEFAULT_SORT = "-at"


def clean_sort(sort: str) -> str:
    """``sort`` if it names a column (``-`` for descending), else the default (newest first)."""
    return sort if sort.removeprefix("-") in SORT_FIELDS else DEFAULT_SORT


def _ordering(sort: str) -> tuple[str, ...]:
    """A column ascending, then newest first within each value, as its index runs; descending
    is the exact reverse (last value first, oldest first within it), the same index read
    backwards. Any other order within a value would need a sort of all the rows that have it."""
    desc = sort.startswith("-")
    field = SORT_FIELDS[sort.removeprefix("-")]
    if field == "at":
        return ("-at", "-id") if desc else ("at", "id")
    return (f"-{field}", "at", "id") if desc else (field, "-at", "-id")


def encode_cursor(event: AuditEvent, sort: str = DEFAULT_SORT) -> str:
    field = SORT_FIELDS[sort.removeprefix("-")]
    if field == "at":
        raw = f"{event.at.isoformat()}|{event.pk}"
    else:
        raw = json.dumps([getattr(event, field), event.at.isoformat(), event.pk])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int] | None:
    """(at, id) of the last row seen, or None for a cursor that is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at_text, id_text = raw.rsplit("|", 1)
        at = parse_datetime(at_text)
        return (at, int(id_text)) if at is not None else None
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def decode_column_cursor(cursor: str) -> tuple[str, datetime, int] | None:
    """(column value, at, id) of the last row seen in a column sort, or None."""
    try:
        value, at_text, pk = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode())
        at = parse_datetime(at_text) if isinstance(at_text, str) else None
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(value, str) or at is None or not isinstance(pk, int) or isinstance(pk, bool):
        return None
    return value, at, pk


@dataclass
class Page:
    events: list[AuditEvent]
    next_cursor: str | None


def _older(events: QuerySet[AuditEvent], at: datetime, pk: int) -> QuerySet[AuditEvent]:
    # at <= the cursor's is redundant but is what PostgreSQL can start an index scan at;
    # the OR alone is a filter over every newer row, so page 10,000 would read 500k rows.
    return events.filter(Q(at__lte=at), Q(at__lt=at) | Q(pk__lt=pk))


def _newer(events: QuerySet[AuditEvent], at: datetime, pk: int) -> QuerySet[AuditEvent]:
    return events.filter(Q(at__gte=at), Q(at__gt=at) | Q(pk__gt=pk))


def after_cursor(events: QuerySet[AuditEvent], cursor: str) -> QuerySet[AuditEvent]:
    """The events older than the cursor's position (all of them for no cursor, or one not ours)."""
    position = decode_cursor(cursor) if cursor else None
    if position is None:
        return events
    return _older(events, *position)


def audit_page(events: QuerySet[AuditEvent], *, after: str = "", size: int = 50, sort: str = DEFAULT_SORT) -> Page:
    """One page in ``sort``'s order, after the cursor (keyset: index range scans, never OFFSET
    or COUNT). A cursor that is not ours, or not of this sort, starts from the first page."""
    sort = clean_sort(sort)
    ordering = _ordering(sort)
    events = events.order_by(*ordering)
    desc = sort.startswith("-")
    field = SORT_FIELDS[sort.removeprefix("-")]
    if field == "at":
        position = decode_cursor(after) if after else None
        if position is not None:
            events = _older(events, *position) if desc else _newer(events, *position)
        rows = list(events[: size + 1])
    else:
        rows = _column_page(_ordered_for_filter(events, ordering), field, desc,
                            decode_column_cursor(after) if after else None, size + 1)
    more = len(rows) > size
    rows = rows[:size]
    return Page(events=rows, next_cursor=encode_cursor(rows[-1], sort) if more and rows else None)


# A filtered list sorted by a column: the column's index gives the order, and PostgreSQL,
# which cannot tell where in it a filter's events are, reads it until a page's worth pass.
# For an actor with a dozen events among a million, or one whose events all share the
# last target, that is most of the index (bench/pages.py: 0.57-0.74 s). So when a filter
# keeps at most FEW events (counted by its own index, FEW + 1 at most), the page is ordered
# by the column as a value no index holds: PostgreSQL then takes the filter's events by
# the filter's index and sorts them. A filter that keeps more is common enough in the
# column's order for its index to meet a page of it soon.
FEW = 20_000


class Unindexed(Func):
    """The column's text as a computed value: the same order (collation included), but one
    no index serves, so ORDER BY it cannot be answered by reading the column's index."""

    template = "(%(expressions)s || '')"
    output_field = TextField()


def _ordered_for_filter(events: QuerySet[AuditEvent], ordering: tuple[str, ...]) -> QuerySet[AuditEvent]:
    """``events`` in ``ordering`` (a column sort's, from _ordering), its column as Unindexed
    when a filter keeps at most FEW of them."""
    if not events.query.has_filters():
        return events
    if events.order_by().values(one=Value(1))[: FEW + 1].count() > FEW:
        return events
    first, *rest = ordering
    column = Unindexed(first.removeprefix("-"))
    return events.order_by(column.desc() if first.startswith("-") else column.asc(), *rest)


def _column_page(events: QuerySet[AuditEvent], field: str, desc: bool,
                 position: tuple[str, datetime, int] | None, limit: int) -> list[AuditEvent]:
    if position is None:
        return list(events[:limit])
    value, at, pk = position
    # Two range scans rather than one OR: the rest of the cursor's value (index condition
    # field = value and at beyond the cursor's), then the values after it. One OR would
    # start at the value's first row and step over every row of it already shown: deep in
    # a value a million events share, most of them.
    same = events.filter(**{field: value})
    rows = list((_newer(same, at, pk) if desc else _older(same, at, pk))[:limit])
    if len(rows) < limit:
        rows += list(events.filter(**{f"{field}__{'lt' if desc else 'gt'}": value})[: limit - len(rows)])
    return rows


def iter_events(events: QuerySet[AuditEvent], *, chunk_size: int = 2000, first: int = 50) -> Iterator[AuditEvent]:
    """Every event of the set, newest first, in keyset chunks: the first row comes at once, and
    no server-side cursor (WITH HOLD outside a transaction: the whole result materialised
    before the first row) or transaction stays open while a slow client downloads them all.
    The chunks start at ``first`` rows and double up to ``chunk_size``: a first chunk of 2,000
    model instances was most of the export's time to its first byte (issue 14)."""
    after, size = "", min(first, chunk_size)
    while True:
        page = audit_page(events, after=after, size=size)
        yield from page.events
        if not page.next_cursor:
            return
        after, size = page.next_cursor, min(size * 2, chunk_size)


@dataclass
class DiffRow:
    key: str
    before: Any
    after: Any

    @property
    def changed(self) -> bool:
        return self.before != self.after


def audit_diff(event: AuditEvent) -> list[DiffRow]:
    before = event.before if isinstance(event.before, dict) else {}
    after = event.after if isinstance(event.after, dict) else {}
    keys = list(dict.fromkeys([*before, *after]))
    return [DiffRow(key=k, before=before.get(k), after=after.get(k)) for k in keys]

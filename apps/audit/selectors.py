"""Read side of the audit log pages: search, keyset pages, one event's diff."""

from __future__ import annotations

import base64
import binascii
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


def encode_cursor(event: AuditEvent) -> str:
    raw = f"{event.at.isoformat()}|{event.pk}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, int] | None:
    """(at, id) of the last row seen, or None for a cursor that is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at_text, id_text = raw.rsplit("|", 1)
        at = parse_datetime(at_text)
        return (at, int(id_text)) if at is not None else None
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


@dataclass
class Page:
    events: list[AuditEvent]
    next_cursor: str | None


def after_cursor(events: QuerySet[AuditEvent], cursor: str) -> QuerySet[AuditEvent]:
    """The events older than the cursor's position (all of them for no cursor, or one not ours)."""
    position = decode_cursor(cursor) if cursor else None
    if position is None:
        return events
    at, pk = position
    # at <= the cursor's is redundant but is what PostgreSQL can start an index scan at;
    # the OR alone is a filter over every newer row, so page 10,000 would read 500k rows.
    return events.filter(Q(at__lte=at), Q(at__lt=at) | Q(pk__lt=pk))


def audit_page(events: QuerySet[AuditEvent], *, after: str = "", size: int = 50) -> Page:
    """One page, newest first, after the cursor (keyset: an index range scan, never OFFSET or COUNT)."""
    rows = list(after_cursor(events, after)[: size + 1])
    more = len(rows) > size
    rows = rows[:size]
    return Page(events=rows, next_cursor=encode_cursor(rows[-1]) if more and rows else None)


def iter_events(events: QuerySet[AuditEvent], *, chunk_size: int = 2000) -> Iterator[AuditEvent]:
    """Every event of the set, newest first, in keyset chunks: the first row comes at once, and
    no server-side cursor (WITH HOLD outside a transaction: the whole result materialised
    before the first row) or transaction stays open while a slow client downloads them all."""
    after = ""
    while True:
        page = audit_page(events, after=after, size=chunk_size)
        yield from page.events
        if not page.next_cursor:
            return
        after = page.next_cursor


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
